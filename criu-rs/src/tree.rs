//! Process trees, read from `/proc`.

/// Every task of the tree rooted at `root`, root first (threads' children
/// included).
pub(crate) fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// The state letter of a task (`R`, `S`, `T`, `Z`...), if it exists.
pub(crate) fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether `pid` exists and has not exited.
pub(crate) fn alive(pid: i32) -> bool {
    !matches!(state(pid), None | Some('Z' | 'X'))
}

/// A process held by a pidfd: a signal sent through it reaches that
/// process or, once it is gone, nothing; never a later process that reuses
/// its pid.
#[derive(Debug)]
pub(crate) struct PidFd {
    pid: i32,
    fd: std::os::fd::OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for process `pid` (a thread-group leader).
    pub(crate) fn open(pid: i32) -> std::io::Result<PidFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags; no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PidFd {
            pid,
            // SAFETY: a descriptor just returned by the kernel, owned here
            // (pidfds are close-on-exec).
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// The pid it was opened for.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to the process, if it still exists (`ESRCH` if not).
    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: an open pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as i32,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Pidfds for every task of the tree rooted at `root` that still exists,
/// root first.
pub(crate) fn tree_pidfds(root: i32) -> Vec<PidFd> {
    tree(root)
        .into_iter()
        .filter_map(|p| PidFd::open(p).ok())
        .collect()
}
