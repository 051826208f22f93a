//! Starting CRIU processes the crate owns: a child with one descriptor
//! handed over at a fixed number, optionally in another network namespace,
//! killed and reaped when its owner drops it. Used by the daemons
//! (`daemon.rs`) and by the `criu swrk` a deadline needs (`client.rs`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Error, Result};

/// The descriptor number the service socket gets in a `criu swrk` child.
const SERVICE_FD: i32 = 3;

/// How long [`OwnedChild::wait`] waits for a child to exit on its own.
const WAIT_GRACE: Duration = Duration::from_secs(10);

/// A child process of this one, killed and reaped on drop unless it was
/// reaped before.
#[derive(Debug)]
pub(crate) struct OwnedChild {
    child: Option<Child>,
}

impl OwnedChild {
    /// Spawns `cmd`; `what` names it in the error.
    pub(crate) fn spawn(cmd: &mut Command, what: &str) -> Result<OwnedChild> {
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {what}"), e))?;
        Ok(OwnedChild { child: Some(child) })
    }

    /// Its pid, until it has been reaped.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reaps it if it has exited: `Some(status)` then (and from then on
    /// `pid()` is `None`).
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for it to exit and reaps it; `None` if it was reaped already.
    /// Callers expect it to exit on its own (its status pipe closed, say);
    /// one that is still running after [`WAIT_GRACE`] is killed then, so
    /// that the wait always ends.
    pub(crate) fn wait(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + WAIT_GRACE;
        loop {
            match self.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) | Err(_) => {
                    let status = self
                        .child
                        .take()
                        .and_then(|mut c| c.kill().and_then(|()| c.wait()).ok());
                    return status;
                }
            }
        }
    }

    /// Reaps it once it has exited on its own, polling often at first (a
    /// `criu swrk` exits within microseconds of its reply), then every
    /// 2 ms; kills it if it is still running after `grace`.
    pub(crate) fn reap_within(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(20);
        while self.child.is_some() {
            match self.try_wait() {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
                Ok(None) => self.kill(),
                Ok(Some(_)) | Err(_) => self.child = None,
            }
        }
    }

    /// Kills and reaps it now.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `binary swrk N`, a CRIU that serves one libcriu request over the
/// socket handed to libcriu with `criu_local_set_service_fd`; returns it
/// and libcriu's end of the socket. The descriptors `keep` (those of
/// `--inherit-fd`, which CRIU looks up by number) reach it at the same
/// numbers, as they would through libcriu's own fork; the socket is the
/// first descriptor from 3 up that is none of them.
pub(crate) fn spawn_swrk(binary: &Path, keep: &[RawFd]) -> Result<(OwnedChild, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("creating the CRIU service socket", e.into()))?;
    let service = (SERVICE_FD..)
        .find(|n| !keep.contains(n))
        .unwrap_or(SERVICE_FD);
    let mut cmd = Command::new(binary);
    cmd.arg("swrk")
        .arg(service.to_string())
        .stdin(Stdio::null());
    let mut fds = vec![(theirs.as_raw_fd(), service)];
    fds.extend(keep.iter().map(|&k| (k, k)));
    hand_over_fds(&mut cmd, fds, None);
    let child = OwnedChild::spawn(&mut cmd, &format!("{} swrk", binary.display()))?;
    drop(theirs);
    Ok((child, ours))
}

/// Arranges for each `(fd, target)` pair's `fd` to be descriptor `target`
/// in the child, and every other descriptor above the highest target to
/// be closed at exec (libcriu's sockets are not close-on-exec), after
/// switching to network namespace `netns` if given.
///
/// The descriptors above the targets are marked close-on-exec rather than
/// closed (`CLOSE_RANGE_CLOEXEC`, Linux 5.11): std reports a failed exec
/// through a pipe of its own among them, which must stay open until the
/// exec.
pub(crate) fn hand_over_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>, netns: Option<RawFd>) {
    let last = fds.iter().map(|f| f.1).max().unwrap_or(2);
    // Allocated here: nothing may allocate between fork and exec.
    let mut moved: Vec<RawFd> = vec![0; fds.len()];
    // SAFETY: only async-signal-safe calls (setns, dup2, fcntl,
    // close_range) between fork and exec; `fds` was allocated before.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ns) = netns {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // First out of the targets' way: a source may be another
            // pair's target.
            for (m, &(fd, _)) in moved.iter_mut().zip(fds.iter()) {
                *m = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, last + 1);
                if *m < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (&m, &(_, target)) in moved.iter().zip(fds.iter()) {
                if libc::dup2(m, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let first = last as u32 + 1;
            let flags = libc::CLOSE_RANGE_CLOEXEC;
            if libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_on_a_child_that_does_not_exit_ends_with_its_kill() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut child = OwnedChild::spawn(&mut cmd, "sleep").unwrap();
        let start = Instant::now();
        let status = child.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(start.elapsed() >= WAIT_GRACE);
        assert!(child.pid().is_none() && child.wait().is_none());
    }

    #[test]
    fn a_failed_exec_is_reported_as_such() {
        // std reports exec errors through a close-on-exec pipe of its own,
        // which the hand-over must leave open until the exec.
        let e = spawn_swrk(Path::new("/nonexistent/criu"), &[]).unwrap_err();
        let Error::Io { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn the_handed_over_fd_and_only_it_reaches_the_child() {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // A descriptor that is not close-on-exec, as libcriu's are.
        let stray = nix::unistd::dup(ours.as_raw_fd()).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("ls /proc/self/fd");
        cmd.stdout(Stdio::piped());
        hand_over_fds(&mut cmd, vec![(theirs.as_raw_fd(), 3)], None);
        let out = cmd.output().unwrap();
        nix::unistd::close(stray).unwrap();
        let fds: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert!(fds.contains(&3), "{fds:?}");
        assert!(!fds.contains(&stray), "{fds:?}");
    }
}
