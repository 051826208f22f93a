//! A process with a chosen pid, without touching the PID namespace's
//! `ns_last_pid` (a sysctl every process of the namespace shares): the
//! kernel's `clone3` with `set_tid`, as CRIU itself restores pids (root,
//! Linux 5.5 or newer).

use std::ffi::CString;
use std::io;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// `struct clone_args` of linux/sched.h, up to `set_tid_size`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// A child of this process running `sleep SECONDS` under a pid chosen by
/// the caller; killed and reaped on drop.
#[derive(Debug)]
pub struct PidHolder {
    pid: i32,
    reaped: bool,
}

impl PidHolder {
    /// Starts `/bin/sleep seconds` as pid `pid` (of this process's PID
    /// namespace). `EEXIST` if the pid is taken.
    pub fn sleep_as(pid: i32, seconds: Duration) -> io::Result<PidHolder> {
        // Everything the child needs, made before the clone: between the
        // clone and the exec it only calls execv and _exit.
        let prog = CString::new("/bin/sleep").unwrap();
        let arg = CString::new(seconds.as_secs().to_string()).unwrap();
        let argv = [prog.as_ptr(), arg.as_ptr(), std::ptr::null()];
        let tids = [pid as libc::pid_t];
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: tids.as_ptr() as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM is a fork; the child only execs
        // (its arguments were built above) or exits, both async-signal-safe.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: in the child: exec, or exit without unwinding.
                unsafe {
                    libc::execv(prog.as_ptr(), argv.as_ptr());
                    libc::_exit(127)
                }
            }
            child => Ok(PidHolder {
                pid: child as i32,
                reaped: false,
            }),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it still runs (it is reaped if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => true,
            _ => {
                self.reaped = true;
                false
            }
        }
    }
}

impl Drop for PidHolder {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_pid_is_refused_and_a_freed_one_is_taken_again() {
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = other.id() as i32;
        let e = PidHolder::sleep_as(pid, Duration::from_secs(60)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        other.kill().unwrap();
        other.wait().unwrap();
        let mut again = PidHolder::sleep_as(pid, Duration::from_secs(60)).unwrap();
        assert_eq!(again.pid(), pid);
        assert!(again.is_running());
        drop(again);
        assert!(!crate::alive(pid), "killed and reaped on drop");
    }
}
