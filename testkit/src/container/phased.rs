//! Engines that migrate in three separate phases, each run by the engine
//! itself (runc, Docker): checkpoint on host a, carry the checkpoint to
//! host b (by default over TCP with `criu::transfer`), restore on host b.
//! The move and the order of the phases are written once, here.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::transfer::{self, TransferStats};

use super::{BoxError, Engine, Moved};
use crate::hosts::{Relay, TwoHosts};
use crate::measure::DumpTimes;

/// A checkpoint taken on host a.
#[derive(Debug)]
pub struct Checkpointed {
    /// The directory of CRIU images to send.
    pub images: PathBuf,
    /// The checkpoint call's wall time.
    pub wall: Duration,
    /// CRIU's own dump timings.
    pub criu: DumpTimes,
    /// Where CRIU's `stats-dump` and `dump.log` are kept, when not among
    /// the images.
    pub criu_files: Option<PathBuf>,
}

/// A checkpoint carried from host a to host b.
#[derive(Debug)]
pub struct Carried {
    /// Bytes that crossed (the TCP stream's, or the image's).
    pub bytes: u64,
    /// Time it took, end to end.
    pub elapsed: Duration,
    /// Push and pull, when it went through a registry.
    pub registry: Option<super::RegistryCost>,
}

/// A container restored on host b.
#[derive(Debug)]
pub struct Restored {
    /// The restore call's wall time.
    pub wall: Duration,
    /// CRIU's `restore_time`, when it left its statistics.
    pub restore_time_us: Option<u64>,
    /// The restored container's init.
    pub pid: i32,
}

/// The three phases of an engine that checkpoints and restores by itself.
pub trait Phased: Engine {
    /// Checkpoints the counter on host a; it stops printing.
    fn checkpoint(&mut self, hosts: &TwoHosts) -> Result<Checkpointed, BoxError>;
    /// Where host b wants the checkpoint (a path that does not exist yet;
    /// its parent does).
    fn landing(&mut self, hosts: &TwoHosts) -> Result<PathBuf, BoxError>;
    /// Restores the counter on host b from the checkpoint at `images`.
    fn restore(&mut self, hosts: &TwoHosts, images: &Path) -> Result<Restored, BoxError>;
    /// Carries the checkpoint `cp` from host a to `to` on host b: by
    /// default over one TCP connection, with `criu::transfer`.
    fn carry(
        &mut self,
        hosts: &TwoHosts,
        cp: &Checkpointed,
        to: &Path,
    ) -> Result<Carried, BoxError> {
        let sent = move_checkpoint(hosts, &cp.images, to, self.relay())?;
        Ok(Carried {
            bytes: sent.bytes,
            elapsed: sent.elapsed,
            registry: None,
        })
    }
    /// A relay the checkpoint passes through on host b (fault tests).
    fn relay(&self) -> Option<Relay> {
        None
    }
    /// Brings the source back after a failure past the checkpoint, for
    /// engines that can (the default cannot, and says nothing).
    fn recover(&mut self, _hosts: &TwoHosts) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Checkpoints on host a, moves the checkpoint to host b, restores it
/// there; on a failure past the checkpoint, asks the engine to bring the
/// source back.
pub fn migrate_phased(engine: &mut impl Phased, hosts: &TwoHosts) -> Result<Moved, BoxError> {
    let cp = engine.checkpoint(hosts)?;
    let lines_before = engine.numbers()?.len();
    let moved = move_and_restore(engine, hosts, &cp);
    let (carried, restored) = match moved {
        Ok(done) => done,
        Err(e) => {
            return Err(match engine.recover(hosts) {
                Ok(()) => e,
                Err(r) => format!("{e}; and bringing the source back failed too: {r}").into(),
            })
        }
    };
    Ok(Moved {
        criu: cp.criu,
        dump: cp.wall,
        transfer_bytes: carried.bytes,
        transfer: carried.elapsed,
        restore: restored.wall,
        restore_time_us: restored.restore_time_us,
        lines_before,
        pid_after: restored.pid,
        registry: carried.registry,
    })
}

fn move_and_restore(
    engine: &mut impl Phased,
    hosts: &TwoHosts,
    cp: &Checkpointed,
) -> Result<(Carried, Restored), BoxError> {
    let target = engine.landing(hosts)?;
    let carried = engine.carry(hosts, cp, &target)?;
    let restored = engine.restore(hosts, &target)?;
    Ok((carried, restored))
}

/// CRIU's dump timings from the `stats-dump` it left in `dir`.
pub fn dump_times_in(dir: &Path) -> Result<DumpTimes, BoxError> {
    let stats = criu::ImagesDir::open(dir)?.dump_stats()?;
    Ok(DumpTimes::of(stats.and_then(|s| s.dump).as_ref()))
}

/// CRIU's `restore_time` from the `stats-restore` it left in `dir`, if any.
pub fn restore_time_in(dir: &Path) -> Result<Option<u64>, BoxError> {
    let stats = criu::ImagesDir::open(dir)?.restore_stats()?;
    Ok(stats
        .and_then(|s| s.restore)
        .map(|s| s.restore_time.as_micros() as u64))
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> criu::Error {
    move |source| criu::Error::Io {
        what: what.into(),
        source,
    }
}

/// The receiving end on host b: the sender's connection, or, with a
/// relay, a second connection that the relay feeds from the first.
fn accept_on_b(listener: &TcpListener, relay: Option<Relay>) -> std::io::Result<TcpStream> {
    let (from_a, _) = listener.accept()?;
    let Some(relay) = relay else {
        return Ok(from_a);
    };
    let inner = TcpListener::bind((listener.local_addr()?.ip(), 0))?;
    let inner_addr = inner.local_addr()?;
    std::thread::spawn(move || match TcpStream::connect(inner_addr) {
        Ok(to_b) => relay(from_a, to_b),
        Err(_) => drop(from_a),
    });
    Ok(inner.accept()?.0)
}

/// Sends the files of `from` (on host a) over a TCP connection to host b,
/// which writes them to `to`: the same transfer code as criu-rs's own
/// migration. `relay`, when given, sits on host b between the two.
pub fn move_checkpoint(
    hosts: &TwoHosts,
    from: &Path,
    to: &Path,
    relay: Option<Relay>,
) -> Result<TransferStats, BoxError> {
    let listener = hosts.b.run(|| TcpListener::bind((hosts.b.addr, 0)))??;
    let addr = listener.local_addr()?;
    std::thread::scope(|s| {
        let recv = s.spawn(|| {
            hosts.b.run(|| -> criu::Result<_> {
                let mut stream = accept_on_b(&listener, relay).map_err(io_err("accept"))?;
                transfer::receive_dir(&mut stream, to, &transfer::Limits::default(), None)
            })
        });
        let sent = hosts.a.run(|| -> criu::Result<_> {
            let mut stream = TcpStream::connect(addr).map_err(io_err("connect"))?;
            let s = transfer::send_dir(&mut stream, from, None)?;
            stream.flush().map_err(io_err("flush"))?;
            Ok(s)
        });
        if sent.as_ref().map_or(true, |r| r.is_err()) {
            // Wake a receiver still waiting in accept (the sender never
            // connected); it then fails on the empty stream.
            let _ = hosts.a.run(|| TcpStream::connect(addr));
        }
        let received = recv.join().map_err(|_| "the receiver panicked")?;
        // The receiver's error says more (it saw the stream end early).
        received??;
        Ok(sent??)
    })
}
