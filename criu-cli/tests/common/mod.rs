//! What the CLI's tests share: the binary, workloads started clean (no
//! descriptor of the test's beyond 0-2: a harness may leave some open,
//! from another mount namespace say, and CRIU cannot dump those; their
//! own session when asked: CRIU needs the tree's session leader inside
//! it, and CI runs in session 0), children killed and reaped on drop,
//! and polling with a deadline; in `moves`, what the tests of `send` and
//! `receive` share. Each test file uses part of it.
#![allow(dead_code)]

pub mod moves;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `criu-rs` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_criu-rs")
}

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

/// A child of the test, killed (by its pid) and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Retries `f` every 20 ms until it gives a value, for up to `limit`.
pub fn poll_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `f` holds within `limit` (checked every 20 ms).
pub fn holds_within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_for(limit, || f().then_some(())).is_some()
}

/// The state letter of `pid` (`R`, `S`, `T`, `Z`...), `None` once gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `f` on drop.
pub fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The `--strategy` names a move can use here, for the test `id`
/// (`file::name`): every one, pre-copy only where CRIU can track memory
/// (soft-dirty, or the set-up's userfaultfd patch); without it the skip
/// of pre-copy goes through `criu_testkit::skip`, which fails the test
/// unless the Makefile allow-lists it.
pub fn strategies(id: &str) -> Vec<&'static str> {
    let mut all = vec!["stop-and-copy", "page-server", "lazy"];
    if criu::Criu::new().feature_check().is_ok_and(|f| f.mem_track) {
        all.push("pre-copy");
    } else {
        criu_testkit::skip::skip(
            id,
            "pre-copy: CRIU cannot track memory changes here (no soft-dirty bits, and a \
             CRIU without patches/criu-uffd-wp-track.patch: run `make setup`)",
        );
    }
    all
}
