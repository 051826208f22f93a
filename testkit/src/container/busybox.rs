//! The classic busybox counter: its script, a root filesystem from
//! Debian's busybox-static, and the numbers it printed to a log file.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::BoxError;

/// The classic busybox counter; `INTERVAL` is replaced by the interval.
pub const SCRIPT: &str = "i=0; while true; do echo $i; i=$(expr $i + 1); sleep INTERVAL; done";

/// A root filesystem from Debian's busybox-static.
pub fn make_rootfs(dir: &Path) -> Result<(), BoxError> {
    for d in ["bin", "proc", "log", "dev", "tmp", "oldroot"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err(
            "/bin/busybox is missing: install busybox-static (scripts/setup.sh does)".into(),
        );
    }
    fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in ["sh", "expr", "sleep", "setsid", "umount", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let null = dir.join("dev/null");
    let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes())?;
    // SAFETY: mknod with a valid path; a character device 1:3 (/dev/null).
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// The numbers the counter printed, in order.
pub fn numbers(log: &Path) -> Vec<u64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until the log holds `n` numbers.
pub fn wait_lines(log: &Path, n: usize, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while numbers(log).len() < n {
        if Instant::now() > deadline {
            return Err(format!(
                "{} has fewer than {n} lines after {timeout:?}",
                log.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// 0, 1, 2, ... without a gap, repeat or reset.
pub fn consecutive(nums: &[u64]) -> bool {
    nums.iter().enumerate().all(|(i, n)| *n == i as u64)
}
