//! `check`: CRIU works here (its own self-check), and what it offers.

use criu::Criu;
use serde_json::json;

use crate::error::{CliError, CliResult};
use crate::output::print_json;

/// Runs CRIU's check; prints its version and features.
pub fn check(json: bool) -> CliResult {
    let criu = Criu::new();
    quiet_stdout(|| criu.check()).map_err(|e| {
        let hint = if e.is_connect() {
            "install CRIU 4.1 or newer (scripts/setup.sh builds 4.2.1) and run as root"
        } else {
            "run `criu check` to see which kernel feature is missing"
        };
        CliError::from(e).hint(hint)
    })?;
    let version = criu.version()?;
    let features = criu.feature_check()?;
    if json {
        return print_json(&json!({
            "ok": true,
            "version": version.to_string(),
            "features": features,
        }));
    }
    println!("CRIU {version} works here");
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "  memory tracking (pre-dump, iterative): {}",
        yes(features.mem_track)
    );
    println!(
        "  lazy pages (post-copy migration):      {}",
        yes(features.lazy_pages)
    );
    println!(
        "  pidfd store:                           {}",
        yes(features.pidfd_store)
    );
    Ok(())
}

/// Runs `f` with stdout on /dev/null: CRIU's check prints "Looks good."
/// there, which would break `--json` (stdout is flushed first, and put
/// back after).
fn quiet_stdout<T>(f: impl FnOnce() -> T) -> T {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let _ = std::io::stdout().flush();
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    // SAFETY: dup of our own stdout; a negative result is checked.
    let saved = unsafe { libc::dup(1) };
    let (Ok(null), true) = (null, saved >= 0) else {
        return f();
    };
    // SAFETY: dup2 onto fd 1 of a descriptor we own.
    unsafe { libc::dup2(null.as_raw_fd(), 1) };
    let result = f();
    // SAFETY: puts the saved stdout back and closes the copy.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    result
}
