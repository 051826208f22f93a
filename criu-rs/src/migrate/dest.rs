//! The destination side: the hello, then the strategy's own sequence
//! (`steps::DestStrategy::run`: receive, restore the tree as a child of
//! this process and continue it), then the source's verdict: the copy is
//! kept unless the source explicitly aborts.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use super::cancel::Cancel;
use super::config::DestConfig;
use super::hold::continue_tree;
use super::report::DestReport;
use super::steps::{Created, Dest, DestStrategy, Running};
use super::strategy;
use super::wire::{self, failed, unexpected, Msg};
use crate::child::RestoredChild;
use crate::client::Criu;
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::options::Options;
use crate::report::RestoreReport;
use crate::transfer::{read_header, Transport};

/// Which strategy receives: the one the caller gave, or the built-in
/// the hello names.
pub(super) enum Choose<'a> {
    Given(&'a mut dyn DestStrategy),
    BuiltIn,
}

pub(super) fn receive(
    criu: &Criu,
    stream: &mut dyn Transport,
    mut cfg: DestConfig<'_>,
    strategy: Choose<'_>,
) -> Result<DestReport> {
    if let Some(files) = cfg.criu_tls.clone().or_else(|| stream.criu_tls()) {
        cfg.daemons.tls(&files);
    }
    let mut created = Created::default();
    let mut step = Step::Handshake;
    // The caller's token cancels this receive's own, and so does the
    // time limit.
    let user = std::mem::replace(&mut cfg.cancel, Cancel::new());
    let cancel = cfg.cancel.clone();
    let linked = {
        let inner = cancel.clone();
        user.on_cancel(Some(Box::new(move || inner.cancel())))
    };
    let limit = TimeLimit::start(cfg.time_limit, &cancel);
    let woken = cancel.on_cancel(stream.interrupter());
    let r = receive_inner(criu, stream, &cfg, &mut created, &mut step, strategy);
    drop(woken);
    let expired = limit.finish();
    drop(linked);
    r.map_err(|e| {
        let mut e = wire::at_step(e, step, SourceState::Unknown, || failed_at(step));
        if expired {
            e = e.into_time_limit_exceeded();
        } else if cancel.is_cancelled() {
            e = e.into_cancelled();
        }
        wire::tell_failure(stream, &e);
        created.remove_all();
        e
    })
}

/// A thread that cancels the receive's token when its time limit passes.
struct TimeLimit {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl TimeLimit {
    fn start(limit: Duration, cancel: &Cancel) -> TimeLimit {
        let (stop, stopped) = mpsc::channel::<()>();
        let cancel = cancel.clone();
        let thread = std::thread::spawn(move || match stopped.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                cancel.cancel();
                true
            }
            _ => false,
        });
        TimeLimit { stop, thread }
    }

    /// Stops the timer; whether the limit had passed.
    fn finish(self) -> bool {
        drop(self.stop);
        self.thread.join().unwrap_or(false)
    }
}

/// How long the restore may take when the configuration sets no
/// deadline (a 1 GiB tree restores in under a second here): a restore
/// that hangs (seen with lazy pages, after CRIU's "Killing processes
/// because of failure on restore") is killed then.
const RESTORE_DEADLINE: Duration = Duration::from_secs(300);

/// What the destination says when `step` failed.
fn failed_at(step: Step) -> String {
    match step {
        Step::Handshake => "the source's hello failed; nothing was received",
        Step::Transfer => "receiving the images failed; what arrived was removed",
        Step::Restore => "the restore failed; the received images were removed",
        Step::LazyPages => {
            "fetching the lazy pages failed; the restored copy was killed and the images removed"
        }
        _ => "the migration failed; the restored copy was killed",
    }
    .into()
}

fn receive_inner(
    criu: &Criu,
    stream: &mut dyn Transport,
    cfg: &DestConfig<'_>,
    created: &mut Created,
    step: &mut Step,
    strategy: Choose<'_>,
) -> Result<DestReport> {
    // Without a deadline a silent source is still given up, after the
    // limits' idle timeout.
    let timeout = cfg.deadline.unwrap_or(cfg.limits.idle());
    stream
        .prepare(Some(timeout))
        .map_err(|e| Error::io("preparing the stream (timeouts, TCP_NODELAY)", e))?;
    read_header(&mut &mut *stream)?;
    let (name, memory) = match wire::recv(stream)? {
        Msg::Hello { strategy, memory } => (strategy, memory),
        other => {
            return Err(unexpected(
                Step::Handshake,
                SourceState::Unknown,
                "a hello",
                &other,
            ))
        }
    };
    let mut built_in;
    let strategy: &mut dyn DestStrategy = match strategy {
        Choose::Given(s) if s.name() == name => s,
        Choose::Given(s) => {
            return Err(failed(
                Step::Handshake,
                SourceState::Unknown,
                format!(
                    "the source migrates with the {name} strategy, and this destination \
                     receives with {}",
                    s.name()
                ),
                None,
            ))
        }
        Choose::BuiltIn => {
            built_in = strategy::dest(&name)?;
            built_in.as_mut()
        }
    };
    let ends = stream.ip_addresses().map_err(wire::no_addresses)?;
    let work_dir = cfg.work_dir.hold()?;
    *step = Step::Transfer;
    let mut dest = Dest {
        criu,
        stream: &mut *stream,
        cfg,
        work_dir: work_dir.path(),
        images: work_dir.path().join("images"),
        created,
        step: &mut *step,
        memory,
        local: cfg.criu_address.or(ends.map(|a| a.0)),
        peer: cfg.criu_peer.or(ends.map(|a| a.1)),
        restore,
    };
    let Running {
        child,
        restore,
        transfer,
    } = strategy.run(&mut dest)?;
    *step = Step::Confirm;
    let source_confirmed = await_verdict(stream, &cfg.cancel)?;
    Ok(DestReport {
        strategy: name,
        child,
        restore,
        transfer,
        source_confirmed,
    })
}

/// Restores the tree from `images` as a child of this process, and
/// continues it (CRIU restores it stopped).
fn restore(
    criu: &Criu,
    images: &ImagesDir,
    work: Option<&ImagesDir>,
    cfg: &DestConfig<'_>,
    strategy: &dyn Fn(&mut Options<'_>),
) -> Result<(RestoredChild, RestoreReport)> {
    let mut o = Options::new();
    if let Some(c) = &cfg.customize {
        c(&mut o);
    }
    let mut user = o.notify.take();
    let cancel = cfg.cancel.clone();
    // A cancel refuses CRIU's next notification, which fails the restore.
    // Up to post-restore CRIU kills what it restored so far; after it
    // (pre-resume, post-resume) CRIU only logs the refusal and resumes
    // the tree, which `restore_child` then kills and reaps: either way
    // nothing restored is left.
    o.on_notify(move |n| {
        if let Some(user) = user.as_mut() {
            user(n)?;
        }
        match cancel.is_cancelled() {
            true => ControlFlow::Break("the migration was cancelled".into()),
            false => ControlFlow::Continue(()),
        }
    });
    o.images_dir(images).log_file("restore.log");
    if let Some(w) = work {
        o.work_dir(w);
    }
    if cfg.tcp_established {
        o.tcp_established(true);
    }
    o.deadline(cfg.deadline.unwrap_or(RESTORE_DEADLINE));
    strategy(&mut o);
    let (child, restore) = criu.restore_child(&mut o)?;
    continue_tree(child.pid());
    Ok((child, restore))
}

/// The source's verdict on the restored copy, which runs already. `Done`
/// (the source stops its copy): confirmed, and answered with `Kept`. An
/// explicit abort: an error, and the restored copy goes. Anything else
/// (silence, a broken stream): the copy is kept unconfirmed, since the
/// source may have stopped its copy for good and a duplicate is better
/// than a loss. Cancelled before `Done`, the restored copy goes (and the
/// source, told so, resumes its own).
fn await_verdict(stream: &mut dyn Transport, cancel: &Cancel) -> Result<bool> {
    match wire::recv(stream) {
        Ok(Msg::Done) => {
            // If this is lost the source resumes its copy too: a duplicate.
            let _ = wire::send(stream, &Msg::Kept);
            Ok(true)
        }
        Ok(Msg::Failed {
            message,
            source_state,
            ..
        }) => Err(failed(
            Step::Confirm,
            source_state.unwrap_or(SourceState::Resumed),
            format!(
                "the source aborted after the restore ({message}); the restored copy was killed"
            ),
            None,
        )),
        Ok(_) | Err(_) if cancel.is_cancelled() => {
            Err(wire::cancelled(Step::Confirm, SourceState::Unknown))
        }
        Ok(_) | Err(_) => Ok(false),
    }
}
