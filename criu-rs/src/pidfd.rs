//! Process descriptors (`pidfd_open`, Linux 5.3+): a handle on one process
//! that stays bound to it, so a signal sent through it can never reach
//! another process that reused the pid in the meantime.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A descriptor of one process, close-on-exec.
#[derive(Debug)]
pub(crate) struct Pidfd {
    pid: i32,
    fd: OwnedFd,
}

impl Pidfd {
    /// Opens a descriptor of the process that has `pid` now.
    pub(crate) fn open(pid: i32) -> io::Result<Pidfd> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a plain syscall; pidfd_open's descriptors are
        // close-on-exec by definition.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Pidfd { pid, fd })
    }

    /// The pid the process had when the descriptor was opened.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` (0: only check) to exactly this process; `ESRCH`
    /// once it has exited.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: a plain syscall on a descriptor we own; no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit (to become a zombie
    /// or be reaped); whether it has.
    pub(crate) fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one valid pollfd we own.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc > 0 {
                return true;
            }
            let interrupted =
                rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
            if !interrupted || left.is_zero() {
                return false;
            }
        }
    }

    /// Reaps the process if it is a child of this one that has exited:
    /// `Ok(true)` then, `Ok(false)` while it runs, `ECHILD` if it is not
    /// this process's child (or was reaped already).
    pub(crate) fn try_reap(&self) -> io::Result<bool> {
        self.wait_exited(libc::WNOHANG)
    }

    /// Reaps the process, which must be a child of this one, once it has
    /// exited (blocking until then).
    pub(crate) fn reap(&self) -> io::Result<()> {
        self.wait_exited(0).map(drop)
    }

    /// `waitid` for the exit of this process, with `flags` added to
    /// `WEXITED` (`WNOHANG`: do not block), retried when interrupted:
    /// whether it was reaped (always, unless `WNOHANG` found it running).
    fn wait_exited(&self, flags: libc::c_int) -> io::Result<bool> {
        loop {
            // SAFETY: an all-zero siginfo_t is a valid out-parameter.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on a descriptor we own, with a valid out-pointer.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | flags,
                )
            };
            if rc == 0 {
                // SAFETY: waitid filled `info` (si_pid stays 0 if WNOHANG
                // found nothing that had exited).
                return Ok(unsafe { info.si_pid() } != 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_only_the_process_and_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Pidfd::open(child.id() as i32).unwrap();
        p.signal(0).unwrap();
        p.signal(libc::SIGKILL).unwrap();
        p.reap().unwrap();
        // Reaped through the pidfd: std's wait finds no child any more.
        assert!(child.wait().is_err());
        assert_eq!(
            p.signal(0).unwrap_err().raw_os_error(),
            Some(libc::ESRCH),
            "a signal after the exit goes nowhere"
        );
        assert!(Pidfd::open(0).is_err());
    }

    #[test]
    fn exits_are_awaited_with_a_deadline_and_children_reaped_without_blocking() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Pidfd::open(child.id() as i32).unwrap();
        assert!(!p.wait_exit(std::time::Duration::from_millis(20)));
        assert!(!p.try_reap().unwrap(), "running: nothing to reap");
        p.signal(libc::SIGKILL).unwrap();
        assert!(p.wait_exit(std::time::Duration::from_secs(10)));
        assert!(p.try_reap().unwrap(), "reaped once exited");
        assert!(child.wait().is_err(), "nothing left for std to reap");
        let me = Pidfd::open(std::process::id() as i32).unwrap();
        assert_eq!(
            me.try_reap().unwrap_err().raw_os_error(),
            Some(libc::ECHILD),
            "not our child"
        );
    }
}
