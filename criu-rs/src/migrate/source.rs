//! The source side: stop and dump the tree, send the images, wait for the
//! destination's restore, and only then kill the source copy.

use std::time::{Duration, Instant};

use super::cancel::{Cancel, Registered};
use super::config::{Customize, SourceConfig};
use super::connections::{dump_failed, ServiceMove};
use super::dumping::{DumpJob, Dumping};
use super::hold::{self, Slot};
use super::report::{Phases, SourceReport};
use super::strategy::{self, SourceSide};
use super::wire::{self, failed, unexpected, Msg};
use super::workdir::Held;
use crate::client::Criu;
use crate::credentials::TlsFiles;
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::report::DumpReport;
use crate::transfer::{self, write_header, Growing, TransferStats, Transport};

/// What the destination reported about its restore.
struct Restored {
    pid: i32,
    wall: Duration,
    restore_time_us: Option<u64>,
    /// When the source heard of it (a lazy dump goes on serving pages).
    at: Instant,
}

pub(super) fn send(
    criu: &Criu,
    pid: i32,
    stream: &mut dyn Transport,
    mut cfg: SourceConfig<'_>,
) -> Result<SourceReport> {
    let start = Instant::now();
    let cancel = cfg.cancel.clone();
    let mut woken = Some(cancel.on_cancel(stream.interrupter()));
    let Setup {
        images,
        mut side,
        criu_tls,
        _work_dir,
    } = setup(pid, stream, &cfg)
        .and_then(|s| wire::check(&cancel, Step::Handshake, SourceState::Untouched).map(|()| s))
        .map_err(|e| {
            let e = wire::at_step(e, Step::Handshake, SourceState::Untouched, || {
                "setting up the migration failed; the source process was not touched".into()
            });
            wire::tell_failure(stream, &e);
            if_cancelled(e, &cancel)
        })?;
    let customize = cfg.customize.take();
    before_dump(
        criu,
        pid,
        stream,
        &images,
        &mut *side,
        &cfg,
        customize.as_ref(),
    )?;
    let connections = cfg.connections.take();
    // Dropped after the scope: on failure it moves the address back and
    // unlocks, once the tree was continued.
    let service = connections.as_ref().map(ServiceMove::new);
    let job = DumpJob {
        criu,
        pid,
        images: &images,
        customize: customize.as_ref(),
        deadline: cfg.deadline,
        side: side.as_ref(),
        slot: Slot::default(),
        criu_tls: criu_tls.as_ref().filter(|_| !side.carries_criu_tls()),
        service: connections.as_ref().zip(service.as_ref()),
        cancel: cancel.clone(),
    };
    std::thread::scope(|scope| migrate(scope, job, stream, &mut cfg, start, &mut woken))
        .map_err(|e| if_cancelled(e, &cancel))
}

/// The strategy's step while the tree runs (pre-copy's passes); on
/// failure the destination is told.
fn before_dump(
    criu: &Criu,
    pid: i32,
    stream: &mut dyn Transport,
    images: &ImagesDir,
    side: &mut dyn SourceSide,
    cfg: &SourceConfig<'_>,
    customize: Option<&Customize<'_>>,
) -> Result<()> {
    let at = strategy::Before {
        criu,
        pid,
        stream: &mut *stream,
        work_dir: images.path().parent().unwrap_or(images.path()),
        customize,
        deadline: cfg.deadline,
        cancel: &cfg.cancel,
    };
    side.before_dump(at).map_err(|e| {
        let e = wire::at_step(e, Step::Dump, SourceState::Resumed, || {
            "the strategy's step before the dump failed; the source process runs on".into()
        });
        wire::tell_failure(stream, &e);
        if_cancelled(e, &cfg.cancel)
    })
}

/// `e`, marked as the cancellation if `cancel` was cancelled.
fn if_cancelled(e: Error, cancel: &Cancel) -> Error {
    match cancel.is_cancelled() {
        true => e.into_cancelled(),
        false => e,
    }
}

/// What the source has before it touches the tree.
struct Setup {
    images: ImagesDir,
    side: Box<dyn SourceSide>,
    criu_tls: Option<TlsFiles>,
    // Last: the images directory lives in it.
    _work_dir: Held,
}

/// Readies the stream, says hello, makes the images directory and starts
/// the strategy's part (which may wait for the destination).
fn setup(pid: i32, stream: &mut dyn Transport, cfg: &SourceConfig<'_>) -> Result<Setup> {
    stream
        .prepare(cfg.deadline)
        .map_err(|e| Error::io("preparing the stream (timeouts, TCP_NODELAY)", e))?;
    write_header(&mut &mut *stream)?;
    wire::send(
        stream,
        &Msg::Hello {
            strategy: cfg.strategy,
            memory: Some(crate::tree::memory_bytes(pid)),
        },
    )?;
    let work_dir = cfg.work_dir.hold()?;
    let images = ImagesDir::create(work_dir.path().join("images"))?;
    let named = cfg.criu_addresses.map(|(l, p)| (Some(l), Some(p)));
    let route = strategy::Route::of(stream, named.unwrap_or_default())?;
    let criu_tls = cfg.criu_tls.clone().or_else(|| stream.criu_tls());
    let side = strategy::source_side(cfg.strategy, stream, route, cfg.pre_copy)?;
    Ok(Setup {
        images,
        side,
        criu_tls,
        _work_dir: work_dir,
    })
}

/// Everything from the start of the dump to the source's end.
fn migrate<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    job: DumpJob<'scope>,
    stream: &mut dyn Transport,
    cfg: &mut SourceConfig<'_>,
    start: Instant,
    woken: &mut Option<Registered<'_>>,
) -> Result<SourceReport> {
    let (pid, side, slot) = (job.pid, job.side, job.slot.clone());
    let service = job.service.map(|s| s.1);
    let mut dumping = Dumping::start(scope, job);
    let Dumped {
        early,
        at: images_at,
        streamed,
    } = dump_and_stream(stream, &mut dumping, side, service, &slot, cfg)?;
    let streamed_tail = streamed.map(|(_, tail)| tail);
    let stopped = slot
        .take()
        .ok_or_else(hold::never_stopped)
        .inspect_err(|e| wire::tell_failure(stream, e))?;
    let stopped_at = stopped.since();
    if let Some(s) = service {
        s.move_to_dest()
            .map_err(|e| {
                wire::at_step(e, Step::Connections, SourceState::Resumed, || {
                    "moving the service address to the destination failed; it was moved back \
                     and the source process was resumed"
                        .into()
                })
            })
            .inspect_err(|e| wire::tell_failure(stream, e))?;
    }
    // On failure the dump ends (inside) before the tree is continued (here).
    let sent = streamed.map(|(sent, _)| sent);
    let (sent, restored, dump) =
        until_restored(stream, dumping, early, sent, side, service, cfg, woken)
            .inspect_err(|e| wire::tell_failure(stream, e))?;
    let stopped_to_restored = restored.at.saturating_duration_since(stopped_at);
    let phases = Phases::split(
        &dump,
        images_at.saturating_duration_since(stopped_at),
        // What the transfer took after the images were complete.
        streamed_tail.unwrap_or(sent.elapsed),
        restored.wall,
        stopped_to_restored,
    );
    confirm_end(stream)?;
    // The destination runs and keeps its copy; this one must go.
    match service {
        Some(s) => {
            // Its sockets close while the lock holds: no reset escapes.
            stopped.kill_and_wait(hold::STOP_TIMEOUT);
            s.finish().map_err(|e| {
                wire::at_step(e, Step::Connections, SourceState::Killed, || {
                    "the destination runs the tree and the source copy was killed, but releasing \
                     the source's network lock failed"
                        .into()
                })
            })?;
        }
        None => stopped.kill(),
    }
    Ok(SourceReport {
        strategy: cfg.strategy,
        pid,
        page_server_bytes: side.bytes_beside_stream(&dump),
        dump,
        transfer: sent,
        restored_pid: restored.pid,
        restore_wall: restored.wall,
        restore_time_us: restored.restore_time_us,
        stopped_to_restored,
        total: start.elapsed(),
        phases,
    })
}

/// The images complete: the dump's report if it is over, when, and, if
/// they were sent while the dump wrote them, that transfer and how long it
/// went on after the dump.
struct Dumped {
    early: Option<DumpReport>,
    at: Instant,
    streamed: Option<(TransferStats, Duration)>,
}

/// Waits for the dump's images; a strategy that streams them sends them
/// meanwhile, the pages as CRIU writes them and the rest at the dump's
/// end. On failure the destination is told and the error says why.
fn dump_and_stream(
    stream: &mut dyn Transport,
    dumping: &mut Dumping<'_>,
    side: &dyn SourceSide,
    service: Option<&ServiceMove<'_>>,
    slot: &Slot,
    cfg: &mut SourceConfig<'_>,
) -> Result<Dumped> {
    let dump_failed = |stream: &mut dyn Transport, e: Error| {
        let state = match slot.is_held() {
            true => SourceState::Resumed,
            false => SourceState::Untouched,
        };
        let e = match service {
            Some(s) => s.dump_failed(e, state),
            None => dump_failed(e, state),
        };
        wire::tell_failure(stream, &e);
        e
    };
    if !side.streams_while_dumping() {
        let early = dumping.images_ready().map_err(|e| dump_failed(stream, e))?;
        let at = Instant::now();
        return Ok(Dumped {
            early,
            at,
            streamed: None,
        });
    }
    let mut progress = cfg.progress.take();
    let mut growing = Growing::new(
        &mut *stream,
        dumping.images().path(),
        is_pages_image,
        progress.as_deref_mut().map(|p| p as _),
    );
    // Not `.free_sent(true)`: the end-of-file check re-reads what was sent,
    // and punched pages read back as zeros (checksum mismatch in CI).
    let mut ended = None;
    let cancel = &cfg.cancel;
    let followed = growing.follow(
        || {
            ended = dumping.try_images_ready();
            ended.is_some() || cancel.is_cancelled()
        },
        STREAM_POLL,
    );
    let early = match (followed, ended) {
        (Ok(()), Some(Ok(early))) => early,
        (Ok(()), Some(Err(e))) => {
            drop(growing);
            return Err(dump_failed(stream, e));
        }
        (Err(e), _) => {
            drop(growing);
            return Err(sending_failed(stream, e));
        }
        // Cancelled: the dump is refused at its next notification.
        (Ok(()), None) => {
            drop(growing);
            let e = wire::cancelled(Step::Transfer, SourceState::Resumed);
            return Err(sending_failed(stream, e));
        }
    };
    let at = Instant::now();
    let sent = growing.finish();
    let sent = sent.map_err(|e| sending_failed(stream, e))?;
    Ok(Dumped {
        early,
        at,
        streamed: Some((sent, at.elapsed())),
    })
}

/// How long to wait before looking at the images directory again while
/// the dump writes it and nothing new was there.
const STREAM_POLL: Duration = Duration::from_millis(1);

/// CRIU's memory pages images, the only ones that grow while the dump
/// runs (`pages-<n>.img`, written front to back).
fn is_pages_image(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// Tells the destination that the images will not come, and says so.
fn sending_failed(stream: &mut dyn Transport, e: Error) -> Error {
    let e = images_not_sent(e);
    wire::tell_failure(stream, &e);
    e
}

/// From complete images to the destination's restore and the dump's end;
/// `sent` if the images were sent while the dump wrote them.
/// A cancel is heard until the destination has restored (and, for a lazy
/// migration, while the pages are served): then `woken` is dropped, so
/// that a late cancel does not break the end's exchange.
#[allow(clippy::too_many_arguments)]
fn until_restored(
    stream: &mut dyn Transport,
    dumping: Dumping<'_>,
    early: Option<DumpReport>,
    sent: Option<TransferStats>,
    side: &dyn SourceSide,
    service: Option<&ServiceMove<'_>>,
    cfg: &mut SourceConfig<'_>,
    woken: &mut Option<Registered<'_>>,
) -> Result<(TransferStats, Restored, DumpReport)> {
    let sent = match sent {
        Some(sent) => after_images(stream, side).map(|()| sent)?,
        None => {
            wire::check(&cfg.cancel, Step::Transfer, SourceState::Resumed)
                .map_err(images_not_sent)?;
            send_images(stream, dumping.images(), side, cfg)?
        }
    };
    let restored = await_restore(stream)?;
    if early.is_some() {
        *woken = None;
    }
    if let Some(s) = service {
        s.announce().map_err(|e| {
            wire::at_step(e, Step::Connections, SourceState::Resumed, || {
                "announcing the service address on the destination failed; the address was \
                 moved back and the source process was resumed"
                    .into()
            })
        })?;
    }
    let dump = dumping.finish(early, cfg.lazy_timeout, &cfg.cancel)?;
    *woken = None;
    Ok((sent, restored, dump))
}

/// Sends the images, then what the strategy adds after them.
fn send_images(
    stream: &mut dyn Transport,
    images: &ImagesDir,
    side: &dyn SourceSide,
    cfg: &mut SourceConfig<'_>,
) -> Result<TransferStats> {
    let mut progress = cfg.progress.take();
    let sent = transfer::send_files(
        &mut &mut *stream,
        images.path(),
        progress.as_deref_mut().map(|p| p as _),
    )
    .and_then(|sent| side.after_images(stream).map(|()| sent));
    sent.map_err(images_not_sent)
}

/// What the strategy sends after the images (which went already).
fn after_images(stream: &mut dyn Transport, side: &dyn SourceSide) -> Result<()> {
    side.after_images(stream).map_err(images_not_sent)
}

fn images_not_sent(e: Error) -> Error {
    failed(
        Step::Transfer,
        SourceState::Resumed,
        "sending the images failed; the source process was resumed",
        Some(e),
    )
}

/// Tells the destination that the source stops its copy, and waits for it
/// to say that it keeps its own. Without that answer the source copy is
/// resumed (by the caller dropping it): perhaps a duplicate, never a loss.
fn confirm_end(stream: &mut dyn Transport) -> Result<()> {
    let answer = wire::send(stream, &Msg::Done).and_then(|()| wire::recv(stream));
    let why = match answer {
        Ok(Msg::Kept) => return Ok(()),
        Ok(Msg::Failed { message, .. }) => {
            return Err(failed(
                Step::Confirm,
                SourceState::Resumed,
                format!(
                    "the destination failed after its restore ({message}) and killed its copy; \
                     the source process was resumed"
                ),
                None,
            ))
        }
        Ok(other) => Some(unexpected(
            Step::Confirm,
            SourceState::PossiblyRunningTwice,
            "kept",
            &other,
        )),
        Err(e) => Some(e),
    };
    Err(failed(
        Step::Confirm,
        SourceState::PossiblyRunningTwice,
        "the destination restored the tree but did not confirm that it keeps it; the source \
         process was resumed, so two copies may now run: check the destination",
        why,
    ))
}

/// Waits for the destination's restore.
fn await_restore(stream: &mut dyn Transport) -> Result<Restored> {
    match wire::recv(stream) {
        Ok(Msg::Restored {
            pid,
            wall_us,
            restore_time_us,
        }) => Ok(Restored {
            pid,
            wall: Duration::from_micros(wall_us),
            restore_time_us,
            at: Instant::now(),
        }),
        Ok(Msg::Failed { message, step, .. }) => Err(failed(
            step.unwrap_or(Step::Restore),
            SourceState::Resumed,
            format!("the destination failed: {message}; the source process was resumed"),
            None,
        )),
        Ok(other) => Err(failed(
            Step::Restore,
            SourceState::Resumed,
            format!("unexpected message {other:?}; the source process was resumed"),
            None,
        )),
        Err(e) => Err(failed(
            Step::Restore,
            SourceState::Resumed,
            "lost the destination before it restored; the source process was resumed",
            Some(e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};
    use std::net::{IpAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use nix::sys::socket::{setsockopt, sockopt::Linger};

    use crate::client::Criu;
    use crate::migrate::{SourceConfig, Strategy, Transport};

    /// The source's end of a connection that the destination reset right
    /// after the hello: what the source writes is kept (so the header and
    /// the hello go out), and its addresses are those of a real TCP stream
    /// whose peer reset it.
    struct ResetAfterHello {
        written: Vec<u8>,
        tcp: TcpStream,
    }

    impl Read for ResetAfterHello {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    impl Write for ResetAfterHello {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for ResetAfterHello {
        fn ip_addresses(&self) -> io::Result<Option<(IpAddr, IpAddr)>> {
            self.tcp.ip_addresses()
        }
    }

    /// A loopback TCP stream whose peer closed it with a reset (linger 0).
    fn reset_stream() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&server, Linger, &abort).unwrap();
        drop(server);
        let until = Instant::now() + Duration::from_secs(5);
        while client.peer_addr().is_ok() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        client
    }

    #[test]
    fn a_connection_reset_after_the_hello_is_reported_as_what_it_is() {
        // Before: "the page-server strategy needs CRIU's own TCP
        // connections ..., and the stream is not TCP".
        let dir = tempfile::tempdir().unwrap();
        let mut end = ResetAfterHello {
            written: Vec::new(),
            tcp: reset_stream(),
        };
        let cfg = SourceConfig::new(Strategy::PageServer).work_dir(dir.path());
        let e = crate::migrate::send(&Criu::new(), 1, &mut end, cfg).unwrap_err();
        assert!(
            end.written.windows(5).any(|w| w == b"Hello"),
            "the hello went out first"
        );
        assert_eq!(e.source_state(), Some(crate::SourceState::Untouched), "{e}");
        let crate::Error::Io { source, .. } = e.cause() else {
            panic!("an I/O error, not {e}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    }
}
