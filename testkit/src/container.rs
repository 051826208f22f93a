//! A minimal container for migration tests and examples: the classic
//! busybox counter with its own PID, mount, UTS, IPC and network
//! namespaces, a root filesystem made from Debian's busybox-static, and its
//! output in a log file on the host (bind-mounted at `/log`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{alive, close_inherited_fds};

/// Errors of this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Our own container: unshare's namespaces, a private mount tree with the
/// rootfs bind-mounted and pivoted into, the log directory at /log.
pub struct OwnContainer {
    /// The `unshare` process (our child).
    pub unshare: Child,
    /// The container's init, as seen from the host.
    pub init: i32,
}

impl OwnContainer {
    /// Starts the counter in `rootfs` (from [`make_rootfs`]), logging to
    /// `logdir/counter.log`; `dir` receives the start script.
    pub fn start(
        dir: &Path,
        rootfs: &Path,
        logdir: &Path,
        interval: &str,
    ) -> Result<OwnContainer, BoxError> {
        let start = dir.join("start.sh");
        let script = SCRIPT.replace("INTERVAL", interval);
        fs::write(
            &start,
            format!(
                "#!/bin/sh\nset -e\nR=\"$1\"\nmount --make-rprivate /\nmount --bind \"$R\" \"$R\"\n\
                 mount --bind \"$2\" \"$R/log\"\nmount -t proc proc \"$R/proc\"\ncd \"$R\"\n\
                 pivot_root . oldroot\numount -l /oldroot\n\
                 exec /bin/setsid /bin/sh -c 'exec </dev/null >>/log/counter.log 2>&1; {script}' 10<&-\n"
            ),
        )?;
        fs::set_permissions(&start, fs::Permissions::from_mode(0o755))?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid", "--mount", "--uts", "--ipc", "--net", "--fork", "--",
        ])
        .arg(&start)
        .arg(rootfs)
        .arg(logdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        close_inherited_fds(&mut cmd);
        let unshare = cmd.spawn()?;
        let outer = unshare.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            let kids = fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break p;
            }
            if Instant::now() > deadline {
                return Err("the container did not start".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        Ok(OwnContainer { unshare, init })
    }
}

impl Drop for OwnContainer {
    fn drop(&mut self) {
        if alive(self.init) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
