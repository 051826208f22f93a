//! The source side: the hello, then the strategy's own sequence
//! (`steps::SourceStrategy::run`: dump with the tree held, send, wait for
//! the destination's restore), then the end every strategy shares: `Done`,
//! the destination's `Kept`, and only then the source copy killed.

use std::time::Instant;

use super::cancel::Cancel;
use super::config::SourceConfig;
use super::connections::ServiceMove;
use super::hold::{self, Slot};
use super::report::{Phases, SourceReport};
use super::steps::{Restored, Source, SourceStrategy};
use super::wire::{self, failed, unexpected, Msg};
use super::workdir::{Held, WorkDir};
use crate::client::Criu;
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::transfer::{write_header, Transport};

pub(super) fn send(
    criu: &Criu,
    pid: i32,
    stream: &mut dyn Transport,
    mut cfg: SourceConfig<'_>,
    strategy: &mut dyn SourceStrategy,
) -> Result<SourceReport> {
    let start = Instant::now();
    let cancel = cfg.cancel.clone();
    let woken = cancel.on_cancel(stream.interrupter());
    let (images, _work_dir) = setup(pid, stream, &cfg, strategy.name())
        .and_then(|s| wire::check(&cancel, Step::Handshake, SourceState::Untouched).map(|()| s))
        .map_err(|e| {
            let e = wire::at_step(e, Step::Handshake, SourceState::Untouched, || {
                "setting up the migration failed; the source process was not touched".into()
            });
            wire::tell_failure(stream, &e);
            if_cancelled(e, &cancel)
        })?;
    let customize = cfg.customize.take();
    let connections = cfg.connections.take();
    // Dropped after the scope: on failure it moves the address back and
    // unlocks, once the tree was continued.
    let service = connections.as_ref().map(ServiceMove::new);
    let criu_tls = cfg.criu_tls.clone().or_else(|| stream.criu_tls());
    let progress = cfg.progress.take();
    let name = strategy.name().to_string();
    std::thread::scope(|scope| {
        let mut source = Source {
            criu,
            pid,
            name,
            stream,
            images: &images,
            customize: customize.as_ref(),
            deadline: cfg.deadline,
            cancel: &cancel,
            criu_addresses: cfg.criu_addresses,
            criu_tls: criu_tls.as_ref(),
            service: connections.as_ref().zip(service.as_ref()),
            progress,
            spawn: scope,
            woken: Some(woken),
            step: Step::Handshake,
            slot: Slot::default(),
            held: None,
            told: false,
            free_images: matches!(cfg.work_dir, WorkDir::InMemory),
        };
        let r = strategy.run(&mut source).map_err(|e| source.fail(e));
        let r = r.and_then(|restored| end(&mut source, restored, start));
        r.map_err(|e| if_cancelled(e, &cancel))
    })
}

/// `e`, marked as the cancellation if `cancel` was cancelled.
fn if_cancelled(e: Error, cancel: &Cancel) -> Error {
    match cancel.is_cancelled() {
        true => e.into_cancelled(),
        false => e,
    }
}

/// Readies the stream, says hello and makes the images directory (in the
/// work directory, returned with it: it lives there).
fn setup(
    pid: i32,
    stream: &mut dyn Transport,
    cfg: &SourceConfig<'_>,
    strategy: &str,
) -> Result<(ImagesDir, Held)> {
    stream
        .prepare(cfg.deadline)
        .map_err(|e| Error::io("preparing the stream (timeouts, TCP_NODELAY)", e))?;
    write_header(&mut &mut *stream)?;
    wire::send(
        stream,
        &Msg::Hello {
            strategy: strategy.to_string(),
            memory: Some(crate::tree::memory_bytes(pid)),
        },
    )?;
    let work_dir = cfg.work_dir.hold()?;
    let images = ImagesDir::create(work_dir.path().join("images"))?;
    Ok((images, work_dir))
}

/// The destination restored: `Done`, its `Kept`, and the source copy
/// killed (its service address released).
fn end(source: &mut Source<'_>, restored: Restored, start: Instant) -> Result<SourceReport> {
    let Some(stopped) = source.held.take() else {
        return Err(source.fail(hold::never_stopped()));
    };
    let stopped_at = stopped.since();
    let stopped_to_restored = restored.at.saturating_duration_since(stopped_at);
    let phases = Phases::split(
        &restored.dump,
        restored.images_at.saturating_duration_since(stopped_at),
        restored.transfer_tail,
        restored.wall,
        stopped_to_restored,
    );
    // Without `Kept` the held copy is resumed when `stopped` drops.
    confirm_end(source.stream)?;
    // The destination runs and keeps its copy; this one must go.
    match source.service {
        Some((_, s)) => {
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
        strategy: source.name.clone(),
        pid: source.pid,
        page_server_bytes: restored.beside,
        dump: restored.dump,
        transfer: restored.transfer,
        restored_pid: restored.pid,
        restore_wall: restored.wall,
        restore_time_us: restored.restore_time_us,
        stopped_to_restored,
        total: start.elapsed(),
        phases,
    })
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
