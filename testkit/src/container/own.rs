//! criu-rs's own container: the busybox counter with its own PID, mount,
//! UTS, IPC and network namespaces, a root filesystem made from Debian's
//! busybox-static, and its output in a log file on the host (bind-mounted
//! at `/log`); moved between hosts by `criu::migrate`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criu::migrate::{DestConfig, DestReport, SourceConfig, Strategy};
use criu::{Namespace, NetworkLock, Options};

use super::{make_rootfs, numbers, BoxError, Downtime, Engine, FileWatcher, Moved, SCRIPT};
use crate::hosts::TwoHosts;
use crate::measure::DumpTimes;
use crate::{alive, close_inherited_fds};

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

/// What the engines that move [`OwnContainer`] share ([`OwnEngine`] and
/// the registry's engine): `dir` with both root filesystems (`rootfs-a`
/// for the source, `rootfs-b` for the restore), the log directory, and the
/// source container once started on host a.
pub(crate) struct OwnSetup {
    pub(crate) dir: PathBuf,
    pub(crate) rootfs_b: PathBuf,
    pub(crate) logdir: PathBuf,
    pub(crate) source: Option<OwnContainer>,
}

impl OwnSetup {
    /// Prepares both root filesystems and the log directory under `dir`.
    pub(crate) fn new(dir: &Path) -> Result<OwnSetup, BoxError> {
        let setup = OwnSetup {
            dir: dir.to_path_buf(),
            rootfs_b: dir.join("rootfs-b"),
            logdir: dir.join("log"),
            source: None,
        };
        make_rootfs(&dir.join("rootfs-a"))?;
        make_rootfs(&setup.rootfs_b)?;
        fs::create_dir_all(&setup.logdir)?;
        Ok(setup)
    }

    /// The counter's log file (in the log directory both sides mount).
    pub(crate) fn log(&self) -> PathBuf {
        self.logdir.join("counter.log")
    }

    /// Starts the container on host a in `rootfs-a`; returns its init.
    pub(crate) fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        let rootfs_a = self.dir.join("rootfs-a");
        let c = hosts
            .a
            .run(|| OwnContainer::start(&self.dir, &rootfs_a, &self.logdir, interval))??;
        let init = c.init;
        self.source = Some(c);
        Ok(init)
    }

    /// The numbers the counter has logged so far.
    pub(crate) fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        Ok(numbers(&self.log()))
    }

    /// Watches the log for the gap a move leaves.
    pub(crate) fn downtime(&self) -> Box<dyn Downtime> {
        Box::new(FileWatcher::start(self.log()))
    }
}

/// criu-rs's own container as an [`Engine`]: `criu::migrate` checkpoints
/// it on host a, streams its images and restores it on host b, into a
/// second copy of the root filesystem; the log directory is an external
/// mount that both sides bind to the same host directory.
pub struct OwnEngine {
    own: OwnSetup,
    restored: Option<DestReport>,
}

impl OwnEngine {
    /// Prepares both root filesystems and the log directory under `dir`.
    pub fn new(dir: &Path) -> Result<OwnEngine, BoxError> {
        Ok(OwnEngine {
            own: OwnSetup::new(dir)?,
            restored: None,
        })
    }

    /// The restored container on host b, once migrated.
    pub fn restored(&self) -> Option<&DestReport> {
        self.restored.as_ref()
    }
}

impl Engine for OwnEngine {
    fn name(&self) -> &'static str {
        "criu-rs"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        self.own.start(hosts, interval)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        self.own.numbers()
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        self.own.downtime()
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        let own = &mut self.own;
        let source = own.source.as_mut().ok_or("the container was not started")?;
        let (src_dir, dst_dir) = (own.dir.join("a"), own.dir.join("b"));
        fs::create_dir_all(&src_dir)?;
        fs::create_dir_all(&dst_dir)?;
        let logdir = own.logdir.to_string_lossy().to_string();
        let rootfs_b = &own.rootfs_b;
        let run = hosts.migrate(
            source.init,
            || {
                SourceConfig::new(Strategy::StopAndCopy)
                    .work_dir(&src_dir)
                    .customize(|o| {
                        o.add_ext_mount("/log", "logdir");
                        container_network(o);
                    })
            },
            || {
                DestConfig::new().work_dir(&dst_dir).customize(move |o| {
                    o.root(rootfs_b).add_ext_mount("logdir", logdir.clone());
                    o.network_lock(NetworkLock::Nftables);
                })
            },
            None,
        )?;
        let (src, dst) = (run.src?, run.dst?);
        let _ = source.unshare.wait();
        let moved = Moved {
            criu: DumpTimes::of(src.dump.stats.as_ref()),
            dump: src.dump.wall_time,
            transfer_bytes: src.transfer.bytes,
            transfer: src.transfer.elapsed,
            restore: src.restore_wall,
            restore_time_us: src.restore_time_us,
            lines_before: numbers(&self.own.log()).len(),
            pid_after: dst.child.pid(),
            registry: None,
        };
        self.restored = Some(dst);
        Ok(moved)
    }
}

/// How CRIU treats the container's network namespace. It holds nothing but
/// a loopback device: whoever runs a container sets its network up on each
/// host, so CRIU recreates the namespace without dumping its properties
/// (as runc's checkpoints of the same container show: no netns image).
/// Dumping them runs `ip addr/route/rule save`, `iptables-save`,
/// `ip6tables-save` and their legacy twins inside the frozen time: 100 to
/// 250 ms here. The namespace is locked with nftables, inside CRIU, rather
/// than by running `iptables-restore` to lock and again to unlock (about
/// 80 ms more of frozen time here).
fn container_network(o: &mut Options<'_>) {
    o.empty_ns(Namespace::Net)
        .network_lock(NetworkLock::Nftables);
}
