//! SIGINT, SIGTERM and SIGHUP during `send` and `receive`.
//!
//! The first signal cancels the migration through criu-rs's own token
//! ([`Cancel`], given to `SourceConfig::cancel` / `DestConfig::cancel`):
//! the core resumes the source tree, the destination removes what it
//! received and kills a half-restored copy, and the error it returns
//! [`is_cancelled`](criu::Error::is_cancelled), which the command reports
//! with exit status 5. Before the core runs (waiting for a connection,
//! the pre-flight exchange) the same token is what the command's own
//! waits look at; a read of the command's own that blocks on the stream
//! is woken through the stream's
//! [`Transport::interrupter`](criu::migrate::Transport::interrupter).
//!
//! `Cancel` wakes the migration's blocked reads, not a write blocked on a
//! destination that stopped reading; so `send` also hands over its TCP
//! socket ([`Interrupts::stalled_peer`]): if the migration has not ended
//! [`GRACE`] after the signal, that socket's sending side is shut down,
//! which fails the blocked write and lets the core resume the source as
//! for any other cancellation. Only the sending side: once the
//! destination has restored, the core no longer heeds the cancel (the
//! move is past its point of no return) and waits for the destination to
//! answer its `Done`, which a slow destination may still do; breaking
//! the reading side off too would resume the source while the
//! destination keeps its copy (two copies). Only a destination silent
//! [`LAST_WAIT`] after the signal has the connection broken off whole, so
//! that a dead peer cannot hold the command forever.
//!
//! Later signals are ignored while the source resumes (a `SIGKILL` then
//! would leave it stopped), except once `receive` waits for its restored
//! tree ([`Interrupts::exit_leaving`]): then a signal ends `receive` at
//! once and the tree runs on.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criu::migrate::Cancel;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// How long a cancelled migration may take to end before nothing more is
/// sent to the destination (a write it does not read then fails).
pub const GRACE: Duration = Duration::from_secs(3);

/// How long after the signal a migration that still has not ended has
/// its connection broken off whole (its reads fail too).
pub const LAST_WAIT: Duration = Duration::from_secs(30);

/// The socket shut down if a cancelled migration does not end in time.
type Stalled = Arc<Mutex<Option<TcpStream>>>;

/// What wakes a blocked read of one of the command's own exchanges.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// Catches the three signals while alive.
pub struct Interrupts {
    caught: Arc<AtomicI32>,
    cancel: Cancel,
    wakers: Arc<Mutex<Vec<Waker>>>,
    stalled: Stalled,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Once set (`exit_leaving`), a signal ends the process at once,
    /// leaving this restored pid running.
    leave: Arc<AtomicI32>,
}

impl Interrupts {
    /// Starts catching SIGINT, SIGTERM and SIGHUP.
    pub fn catch() -> std::io::Result<Interrupts> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let caught = Arc::new(AtomicI32::new(0));
        let cancel = Cancel::new();
        let wakers: Arc<Mutex<Vec<Waker>>> = Arc::default();
        let leave = Arc::new(AtomicI32::new(0));
        let stalled: Stalled = Arc::default();
        let (c, k, w, l, st) = (
            caught.clone(),
            cancel.clone(),
            wakers.clone(),
            leave.clone(),
            stalled.clone(),
        );
        let thread = std::thread::spawn(move || {
            for sig in signals.forever() {
                let pid = l.load(Ordering::SeqCst);
                if pid > 0 {
                    eprintln!("interrupted: the restored tree (pid {pid}) keeps running");
                    std::process::exit(crate::error::Exit::Interrupted as i32);
                }
                if c.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    k.cancel();
                    if let Ok(w) = w.lock() {
                        w.iter().for_each(|wake| wake());
                    }
                    let st = st.clone();
                    std::thread::spawn(move || stall_breaker(&st));
                }
            }
        });
        Ok(Interrupts {
            caught,
            cancel,
            wakers,
            stalled,
            handle,
            thread: Some(thread),
            leave,
        })
    }

    /// The token a signal cancels, for the migration's configuration.
    pub fn token(&self) -> &Cancel {
        &self.cancel
    }

    /// Whether a signal came.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Runs `f` (a blocking exchange of the command's own on a stream),
    /// calling `wake` if a signal comes meanwhile (or came already).
    pub fn during<T>(&self, wake: Option<Waker>, f: impl FnOnce() -> T) -> T {
        let Some(wake) = wake else {
            return f();
        };
        if let Ok(mut w) = self.wakers.lock() {
            if self.is_cancelled() {
                wake();
            }
            w.push(wake);
        }
        let out = f();
        if let Ok(mut w) = self.wakers.lock() {
            w.clear();
        }
        out
    }

    /// `socket` (a clone of the migration's) is shut down if a cancelled
    /// migration has not ended [`GRACE`] after the signal (its sending
    /// side; whole after [`LAST_WAIT`]), until [`Interrupts::settled`].
    pub fn stalled_peer(&self, socket: TcpStream) {
        if let Ok(mut s) = self.stalled.lock() {
            *s = Some(socket);
        }
    }

    /// The migration ended: nothing is shut down any more.
    pub fn settled(&self) {
        if let Ok(mut s) = self.stalled.lock() {
            s.take();
        }
    }

    /// From now on a signal ends this process at once, saying that the
    /// restored tree `pid` keeps running (it is detached then: the waiting
    /// `receive` goes, the tree stays).
    pub fn exit_leaving(&self, pid: i32) {
        self.leave.store(pid, Ordering::SeqCst);
    }

    /// The name of the signal caught, if any.
    pub fn caught(&self) -> Option<&'static str> {
        match self.caught.load(Ordering::SeqCst) {
            0 => None,
            SIGINT => Some("SIGINT"),
            SIGTERM => Some("SIGTERM"),
            SIGHUP => Some("SIGHUP"),
            _ => Some("a signal"),
        }
    }
}

/// After a signal: once [`GRACE`] has passed, shuts the sending side of
/// the stalled socket down (if the migration has not settled); once
/// [`LAST_WAIT`] has, the whole connection.
fn stall_breaker(stalled: &Stalled) {
    let socket = || {
        let s = stalled.lock().ok()?;
        s.as_ref()?.try_clone().ok()
    };
    std::thread::sleep(GRACE);
    let Some(s) = socket() else {
        return;
    };
    eprintln!("the migration goes on after the signal: nothing more is sent to the destination");
    let _ = s.shutdown(Shutdown::Write);
    std::thread::sleep(LAST_WAIT.saturating_sub(GRACE));
    if socket().is_some() {
        eprintln!("the destination does not answer: breaking the connection off");
        let _ = s.shutdown(Shutdown::Both);
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.settled();
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
