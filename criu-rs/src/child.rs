//! The restored root task when it is the caller's own child.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A restored process tree whose root task is a child of this process
/// (from [`crate::Criu::restore_child`]), like [`std::process::Child`].
///
/// Dropping the handle of a child that is still running kills it with
/// `SIGKILL` and reaps it, so nothing outlives its owner by accident; call
/// [`RestoredChild::detach`] to keep it running, and take over reaping.
#[derive(Debug)]
pub struct RestoredChild {
    pid: i32,
    status: Option<ExitStatus>,
    detached: bool,
}

impl RestoredChild {
    pub(crate) fn new(pid: i32) -> RestoredChild {
        debug_assert!(pid > 0, "the client rejects pid {pid} as a bad response");
        RestoredChild {
            pid,
            status: None,
            detached: false,
        }
    }

    /// The pid of the restored root task (the pid it had when dumped).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the root task.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the child was already reaped",
            ));
        }
        kill(Pid::from_raw(self.pid), signal).map_err(io::Error::from)
    }

    /// Kills the root task with `SIGKILL` (does not wait).
    pub fn kill(&self) -> io::Result<()> {
        self.signal(Signal::SIGKILL)
    }

    fn waitpid(&mut self, flags: i32) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut raw = 0;
        loop {
            // SAFETY: plain waitpid on our own child with a valid out-pointer.
            let rc = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if rc == self.pid {
                let s = ExitStatus::from_raw(raw);
                self.status = Some(s);
                return Ok(Some(s));
            }
            if rc == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Waits for the root task to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.waitpid(0)
            .map(|s| s.expect("blocking waitpid returns a status"))
    }

    /// Reaps the root task if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Gives up ownership: the process keeps running after the handle is
    /// gone, and the caller must reap it (`waitpid`) when it exits.
    pub fn detach(mut self) -> i32 {
        self.detached = true;
        self.pid
    }
}

impl Drop for RestoredChild {
    fn drop(&mut self) {
        if self.detached || self.status.is_some() {
            return;
        }
        if let Ok(None) = self.try_wait() {
            let _ = self.kill();
        }
        let _ = self.wait();
    }
}
