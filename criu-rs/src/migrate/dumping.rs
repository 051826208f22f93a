//! The source's dump, on a thread of its own: the driver waits for the
//! images to be complete (the end of the dump, or CRIU's status-ready for a
//! dump that goes on serving pages) while the dump may still run.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use super::cancel::Cancel;
use super::config::Customize;
use super::connections::{Connections, ServiceMove};
use super::hold::{self, Slot};
use super::wire::failed;
use crate::client::Criu;
use crate::error::{Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::notify::{Event, Notification};
use crate::options::{NotifyFn, Options};
use crate::report::DumpReport;
use crate::tls::TlsFiles;

/// The error when the pages were not all served in time.
const NOT_IN_TIME: &str =
    "serving lazy pages did not finish in time; the source process was resumed";

/// How often a wait for the lazy dump's end looks at the cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// What the dump thread tells the driver.
enum DumpEvent {
    /// The images to send are complete; the dump serves pages on.
    ImagesReady,
    /// The dump ended.
    Finished(Box<Result<DumpReport>>),
}

/// A dump's options added by the strategy.
pub(super) type DumpOptions<'s> = Box<dyn Fn(&mut Options<'_>) + Send + Sync + 's>;

/// What one dump needs, all of it shareable with the dump thread.
pub(super) struct DumpJob<'j> {
    pub(super) criu: &'j Criu,
    pub(super) pid: i32,
    pub(super) images: &'j ImagesDir,
    pub(super) customize: Option<&'j Customize<'j>>,
    pub(super) deadline: Option<Duration>,
    /// The strategy's own options.
    pub(super) options: Option<DumpOptions<'j>>,
    /// Whether the dump serves pages after its images (lazy): they are
    /// complete at CRIU's status-ready.
    pub(super) serves: bool,
    pub(super) slot: Slot,
    /// CRIU's TLS for its own connections, if the migration is secured.
    pub(super) criu_tls: Option<&'j TlsFiles>,
    /// Established connections to move, and their lock.
    pub(super) service: Option<(&'j Connections<'j>, &'j ServiceMove<'j>)>,
    /// Refuses the dump's next notification once cancelled.
    pub(super) cancel: Cancel,
}

/// The dump running on its thread. Dropped before it finished (the
/// migration failed), it unblocks the dump and waits for its end.
pub(super) struct Dumping<'scope> {
    handle: Option<ScopedJoinHandle<'scope, ()>>,
    events: mpsc::Receiver<DumpEvent>,
    serves: bool,
    /// Ends a dump that serves pages to a destination which will not
    /// come; how long it may serve once the destination restored.
    unblock: Option<Box<dyn Fn() + 'scope>>,
    serve_timeout: Duration,
    images: &'scope ImagesDir,
}

impl<'scope> Dumping<'scope> {
    pub(super) fn start<'env>(scope: &'scope Scope<'scope, 'env>, job: DumpJob<'scope>) -> Self {
        let (tx, events) = mpsc::channel();
        let (serves, images) = (job.serves, job.images);
        let handle = scope.spawn(move || {
            let r = job.run(tx.clone());
            let _ = tx.send(DumpEvent::Finished(Box::new(r)));
        });
        Dumping {
            handle: Some(handle),
            events,
            serves,
            unblock: None,
            serve_timeout: Duration::ZERO,
            images,
        }
    }

    /// How a dump that serves pages is ended early, and how long it may
    /// serve.
    pub(super) fn set_serving(
        &mut self,
        unblock: Option<Box<dyn Fn() + 'scope>>,
        timeout: Duration,
    ) {
        self.unblock = unblock;
        self.serve_timeout = timeout;
    }

    /// How long the dump may serve pages once the destination restored.
    pub(super) fn serve_timeout(&self) -> Duration {
        self.serve_timeout
    }

    fn unblock(&self) {
        if let Some(u) = &self.unblock {
            u();
        }
    }

    /// The directory the dump writes.
    pub(super) fn images(&self) -> &'scope ImagesDir {
        self.images
    }

    /// Waits until the images to send are complete. Returns the dump's
    /// report if the dump is over by then.
    pub(super) fn images_ready(&mut self) -> Result<Option<DumpReport>> {
        let event = self.events.recv().map_err(|_| ());
        self.ready_on(event)
    }

    /// What `event` (none: the dump thread is gone) says of the images.
    fn ready_on(
        &mut self,
        event: std::result::Result<DumpEvent, ()>,
    ) -> Result<Option<DumpReport>> {
        match event {
            Ok(DumpEvent::ImagesReady) => Ok(None),
            Ok(DumpEvent::Finished(r)) => {
                self.join();
                let d = (*r)?;
                if self.serves {
                    return Err(failed(
                        Step::Dump,
                        SourceState::Resumed,
                        "the lazy dump ended without serving pages",
                        None,
                    ));
                }
                Ok(Some(d))
            }
            Err(_) => {
                self.join();
                Err(failed(
                    Step::Dump,
                    SourceState::Resumed,
                    "the dump thread ended without a result",
                    None,
                ))
            }
        }
    }

    /// Like [`Dumping::images_ready`], waiting at most `timeout`: `None`
    /// while the images are not complete yet.
    pub(super) fn images_ready_within(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<Option<DumpReport>>> {
        match self.events.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Ok(e) => Some(self.ready_on(Ok(e))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(self.ready_on(Err(()))),
        }
    }

    /// Like [`Dumping::images_ready`] without waiting: `None` while the
    /// images are not complete yet.
    pub(super) fn try_images_ready(&mut self) -> Option<Result<Option<DumpReport>>> {
        match self.events.try_recv() {
            Err(mpsc::TryRecvError::Empty) => None,
            Ok(e) => Some(self.ready_on(Ok(e))),
            Err(mpsc::TryRecvError::Disconnected) => Some(self.ready_on(Err(()))),
        }
    }

    /// The dump's report: `early` if it was over with the images, else its
    /// end, waited for at most `timeout`.
    pub(super) fn finish(
        mut self,
        early: Option<DumpReport>,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<DumpReport> {
        if let Some(d) = early {
            return Ok(d);
        }
        let r = self.end_within(timeout, cancel);
        self.unblock();
        self.join();
        if cancel.is_cancelled() && !matches!(r, Ok(DumpEvent::Finished(_))) {
            return Err(failed(
                Step::LazyPages,
                SourceState::Resumed,
                "serving the lazy pages was cancelled; the source process was resumed (the \
                 destination copy cannot run on)",
                None,
            )
            .into_cancelled());
        }
        match r {
            Ok(DumpEvent::Finished(r)) => (*r).map_err(|e| {
                if e.is_deadline_exceeded() {
                    return failed(Step::LazyPages, SourceState::Resumed, NOT_IN_TIME, Some(e));
                }
                failed(
                    Step::LazyPages,
                    SourceState::Resumed,
                    "the destination restored, but serving its memory failed; the source process \
                     was resumed (the destination copy cannot run on)",
                    Some(e),
                )
            }),
            _ => Err(failed(
                Step::LazyPages,
                SourceState::Resumed,
                NOT_IN_TIME,
                None,
            )),
        }
    }

    /// The dump's next event, waited for at most `timeout`, or until
    /// `cancel` is.
    fn end_within(
        &self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> std::result::Result<DumpEvent, mpsc::RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(CANCEL_POLL)) {
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => {
                    if cancel.is_cancelled() {
                        return Err(mpsc::RecvTimeoutError::Timeout);
                    }
                }
                r => return r,
            }
        }
    }

    fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Dumping<'_> {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.unblock();
            self.join();
        }
    }
}

impl DumpJob<'_> {
    /// Runs the dump (on the dump thread); tells `events` when the images
    /// are complete ahead of the dump's end.
    fn run(self, events: mpsc::Sender<DumpEvent>) -> Result<DumpReport> {
        let mut o = Options::new();
        if let Some(c) = self.customize {
            c(&mut o);
        }
        let user = o.notify.take();
        let ready = self.serves.then_some(events);
        o.pid(self.pid)
            .images_dir(self.images)
            .log_file("dump.log")
            .leave_running(true)
            .on_notify(stop_at_pre_dump(
                self.pid,
                user,
                self.slot.clone(),
                ready,
                self.service.map(|s| s.1),
                self.cancel.clone(),
            ));
        if let Some(f) = &self.options {
            f(&mut o);
        }
        if let Some(files) = self.criu_tls {
            o.criu_tls(files);
        }
        if let Some((c, _)) = self.service {
            c.dump_options(&mut o);
        }
        if let Some(d) = self.deadline {
            o.deadline(d);
        }
        self.criu.dump(&mut o)
    }
}

/// The dump's notification handler: the hold's (the caller's own handler
/// first, then, at pre-dump, stopping the tree into `slot`); at
/// status-ready it tells `ready`, if given. With connections to move, the
/// service's lock is taken just before the tree stops.
fn stop_at_pre_dump<'a>(
    pid: i32,
    user: Option<Box<NotifyFn<'a>>>,
    slot: Slot,
    ready: Option<mpsc::Sender<DumpEvent>>,
    service: Option<&'a ServiceMove<'a>>,
    cancel: Cancel,
) -> impl FnMut(Notification) -> ControlFlow<String> + 'a {
    let lock = move || match service.map(ServiceMove::lock) {
        Some(Err(e)) => ControlFlow::Break(e),
        _ => ControlFlow::Continue(()),
    };
    let mut hold = hold::at_pre_dump(pid, user, slot, lock);
    let refuse_if_cancelled = move || match cancel.is_cancelled() {
        true => ControlFlow::Break("the migration was cancelled".to_string()),
        false => ControlFlow::Continue(()),
    };
    move |n| {
        let status_ready = matches!(n.event, Event::StatusReady);
        refuse_if_cancelled()?;
        hold(n)?;
        refuse_if_cancelled()?;
        if let (true, Some(r)) = (status_ready, &ready) {
            let _ = r.send(DumpEvent::ImagesReady);
        }
        ControlFlow::Continue(())
    }
}
