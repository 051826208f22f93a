//! criu-rs's own busybox container moved through a registry, as a
//! container [`Engine`]: checkpointed and pushed on host a, pulled and
//! restored on host b into a second copy of the root filesystem (the log
//! directory an external mount on both sides, as for the direct move).

use std::fs;
use std::path::{Path, PathBuf};

use criu_oci::migrate::Restored;
use criu_oci::Compression;

use super::host::RegistryHost;
use super::moves::{move_through_registry, Move};
use crate::container::{
    make_rootfs, numbers, BoxError, Downtime, Engine, FileWatcher, Moved, OwnContainer,
};
use crate::hosts::TwoHosts;
use crate::measure::DumpTimes;

/// The busybox container, moved as an OCI image through a registry on a
/// third host (started with the container, plain HTTP, no auth).
pub struct RegistryEngine {
    dir: PathBuf,
    rootfs_b: PathBuf,
    logdir: PathBuf,
    source: Option<OwnContainer>,
    restored: Option<Restored>,
    registry: Option<RegistryHost>,
}

impl RegistryEngine {
    /// Prepares both root filesystems and the log directory under `dir`.
    pub fn new(dir: &Path) -> Result<RegistryEngine, BoxError> {
        let engine = RegistryEngine {
            dir: dir.to_path_buf(),
            rootfs_b: dir.join("rootfs-b"),
            logdir: dir.join("log"),
            source: None,
            restored: None,
            registry: None,
        };
        make_rootfs(&dir.join("rootfs-a"))?;
        make_rootfs(&engine.rootfs_b)?;
        fs::create_dir_all(&engine.logdir)?;
        Ok(engine)
    }

    fn log(&self) -> PathBuf {
        self.logdir.join("counter.log")
    }
}

impl Engine for RegistryEngine {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        self.registry = Some(RegistryHost::start(hosts, None)?);
        let rootfs_a = self.dir.join("rootfs-a");
        let c = hosts
            .a
            .run(|| OwnContainer::start(&self.dir, &rootfs_a, &self.logdir, interval))??;
        let init = c.init;
        self.source = Some(c);
        Ok(init)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        Ok(numbers(&self.log()))
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        Box::new(FileWatcher::start(self.log()))
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        let log = self.log();
        let (source, registry) = match (self.source.as_mut(), self.registry.as_ref()) {
            (Some(s), Some(r)) => (s, r),
            _ => return Err("the container was not started".into()),
        };
        let (src_dir, dst_dir) = (self.dir.join("a"), self.dir.join("b"));
        fs::create_dir_all(&src_dir)?;
        fs::create_dir_all(&dst_dir)?;
        let logdir = self.logdir.to_string_lossy().to_string();
        let m = Move {
            pid: source.init,
            name: "busybox-counter",
            src_dir: &src_dir,
            dst_dir: &dst_dir,
            compression: Compression::None,
        };
        let (pushed, restored) = move_through_registry(
            hosts,
            registry,
            &m,
            |o| {
                o.add_ext_mount("/log", "logdir");
            },
            |o| {
                o.root(&self.rootfs_b)
                    .add_ext_mount("logdir", logdir.clone());
            },
        )?;
        let moved = Moved {
            criu: DumpTimes::of(pushed.dump.stats.as_ref()),
            dump: pushed.dump.wall_time,
            transfer_bytes: pushed.image_bytes,
            transfer: pushed.push.elapsed + restored.pull.elapsed,
            restore: restored.restore.wall_time,
            restore_time_us: restored
                .restore
                .stats
                .map(|s| s.restore_time.as_micros() as u64),
            lines_before: numbers(&log).len(),
            pid_after: restored.child.pid(),
        };
        pushed.finish();
        let _ = source.unshare.wait();
        self.restored = Some(restored);
        Ok(moved)
    }
}
