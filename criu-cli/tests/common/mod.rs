//! What the tests' workloads share: no descriptor of the test's beyond
//! 0-2 (a harness may leave some open, from another mount namespace say,
//! and CRIU cannot dump those), and their own session when asked (CRIU
//! needs the tree's session leader inside it; CI runs in session 0).

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Closes every descriptor above 2 in the child before it runs, and with
/// `setsid` makes it a session leader.
pub fn clean_start(cmd: &mut Command, setsid: bool) -> &mut Command {
    // SAFETY: close_range and setsid are async-signal-safe; nothing else
    // runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if setsid {
                libc::setsid();
            }
            Ok(())
        })
    }
}
