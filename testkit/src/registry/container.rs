//! criu-rs's own busybox container moved through a registry, as a
//! container [`Engine`]: checkpointed and pushed on host a, pulled and
//! restored on host b into a second copy of the root filesystem (the log
//! directory an external mount on both sides, as for the direct move).

use std::fs;
use std::path::Path;

use criu_oci::migrate::Restored;
use criu_oci::Compression;

use super::host::RegistryHost;
use super::moves::{move_through_registry, Move};
use crate::container::{numbers, BoxError, Downtime, Engine, Moved, OwnSetup, RegistryCost};
use crate::hosts::TwoHosts;
use crate::measure::{ms, DumpTimes};

/// The busybox container, moved as an OCI image through a registry on a
/// third host (started with the container, plain HTTP, no auth).
pub struct RegistryEngine {
    own: OwnSetup,
    restored: Option<Restored>,
    registry: Option<RegistryHost>,
}

impl RegistryEngine {
    /// Prepares both root filesystems and the log directory under `dir`.
    pub fn new(dir: &Path) -> Result<RegistryEngine, BoxError> {
        Ok(RegistryEngine {
            own: OwnSetup::new(dir)?,
            restored: None,
            registry: None,
        })
    }
}

impl Engine for RegistryEngine {
    fn name(&self) -> &'static str {
        "registry"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        self.registry = Some(RegistryHost::start(hosts, None)?);
        self.own.start(hosts, interval)
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        let own = &mut self.own;
        let log = own.log();
        let (source, registry) = match (own.source.as_mut(), self.registry.as_ref()) {
            (Some(s), Some(r)) => (s, r),
            _ => return Err("the container was not started".into()),
        };
        let (src_dir, dst_dir) = (own.dir.join("a"), own.dir.join("b"));
        fs::create_dir_all(&src_dir)?;
        fs::create_dir_all(&dst_dir)?;
        let logdir = own.logdir.to_string_lossy().to_string();
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
                o.root(&own.rootfs_b)
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
            registry: Some(RegistryCost {
                pack_ms: ms(pushed.pack),
                push_ms: ms(pushed.push.elapsed),
                pull_ms: ms(restored.pull.elapsed),
                unpack_ms: ms(restored.unpack),
                image_bytes: pushed.image_bytes,
            }),
        };
        pushed.finish();
        let _ = source.unshare.wait();
        self.restored = Some(restored);
        Ok(moved)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        self.own.numbers()
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        self.own.downtime()
    }
}
