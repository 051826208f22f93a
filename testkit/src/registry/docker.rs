//! The Docker engine's container moved through a registry, as a container
//! [`Engine`]: host a's `dockerd` checkpoints it (`docker checkpoint
//! create`), the checkpoint is packed as a checkpoint archive and pushed
//! as an OCI image with the `org.criu.checkpoint.*` annotations Docker's
//! container earns (engine `docker` and its version, the container's name
//! and image, CRIU's version, the host's architecture, kernel and cgroup
//! version); host b pulls it, checks those annotations and the layer's
//! digest, unpacks it into the checkpoints folder of a clone (`docker
//! create` of the same image) and starts the clone from it (`docker start
//! --checkpoint`).
//!
//! Everything but the carrying is [`DockerEngine`]'s own, through the
//! [`Phased`] seam: the same checkpoint, clone, restore and recovery (if
//! the pull or the restore fails, the source starts again from its
//! checkpoint on host a).

use std::fs;
use std::path::{Path, PathBuf};

use criu_oci::{ArchiveMeta, Compression, HostFacts, Limits, Registry};

use super::host::RegistryHost;
use crate::container::{
    migrate_phased, BoxError, Carried, Checkpointed, DockerEngine, Downtime, Engine, Moved, Phased,
    RegistryCost, Restored,
};
use crate::hosts::TwoHosts;
use crate::measure::ms;

/// What `start` sets up besides Docker: the registry on its own host, a
/// client for each side (already pinged), and this machine's facts (its
/// two hosts share the kernel and CRIU), all before the source stops.
struct Route {
    registry: RegistryHost,
    reference: String,
    clients: (Registry, Registry),
    facts: HostFacts,
}

/// Docker's counter, its checkpoint carried through a registry on a third
/// host (plain HTTP, no auth).
pub struct DockerRegistryEngine {
    docker: DockerEngine,
    route: Option<Route>,
    tamper: bool,
}

impl DockerRegistryEngine {
    /// Prepares `dir`, where both Docker hosts will keep everything.
    pub fn new(dir: &Path) -> Result<DockerRegistryEngine, BoxError> {
        Ok(DockerRegistryEngine {
            docker: DockerEngine::new(dir)?,
            route: None,
            tamper: false,
        })
    }

    /// Alters one byte of the pushed layer in the registry's storage
    /// before host b pulls it (tests: the pull must refuse it by its
    /// digest, and the source count on).
    pub fn tamper_with_pushed_layer(&mut self) {
        self.tamper = true;
    }

    /// The Docker engine underneath (its daemons and containers).
    pub fn docker(&self) -> &DockerEngine {
        &self.docker
    }

    /// The registry, once started.
    pub fn registry(&self) -> Option<&RegistryHost> {
        self.route.as_ref().map(|r| &r.registry)
    }

    /// The image reference the checkpoint is pushed as.
    pub fn reference(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.reference.as_str())
    }

    /// The archive's metadata, as Docker's container has it.
    fn archive_meta(&self, cp: &Checkpointed) -> Result<ArchiveMeta, BoxError> {
        let logs = self.docker.logs()?;
        let ids = logs.ids()?;
        Ok(ArchiveMeta {
            name: self.docker.container_name().into(),
            id: ids.source,
            rootfs_image_name: Some(ids.image),
            args: vec!["/bin/sh".into(), "-c".into(), ids.script],
            cwd: "/".into(),
            engine: Some(("docker".into(), logs.a.api().version()?)),
            // Debian's docker.io runs containers with runc.
            runtime: Some("runc".into()),
            criu_files: cp.criu_files.clone(),
            ..ArchiveMeta::default()
        })
    }
}

impl Engine for DockerRegistryEngine {
    fn name(&self) -> &'static str {
        "docker+registry"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        let registry = RegistryHost::start(hosts, None)?;
        let reference = registry.fresh_reference(self.docker.container_name());
        let clients = registry.clients(hosts, &reference)?;
        let facts = HostFacts::current(&criu::Criu::new())?;
        self.route = Some(Route {
            registry,
            reference,
            clients,
            facts,
        });
        self.docker.start(hosts, interval)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        self.docker.numbers()
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        self.docker.downtime()
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        migrate_phased(self, hosts)
    }
}

impl Phased for DockerRegistryEngine {
    fn checkpoint(&mut self, hosts: &TwoHosts) -> Result<Checkpointed, BoxError> {
        self.docker.checkpoint(hosts)
    }

    fn landing(&mut self, hosts: &TwoHosts) -> Result<PathBuf, BoxError> {
        self.docker.landing(hosts)
    }

    /// Host a packs and pushes (uncompressed: gzip would add to the
    /// downtime and checkpointed memory rarely shrinks), host b pulls,
    /// verifies and unpacks in the clone's checkpoints folder; the
    /// archive's `checkpoint/` directory (CRIU's images) is then renamed
    /// to `to` and the rest of the archive removed.
    fn carry(
        &mut self,
        hosts: &TwoHosts,
        cp: &Checkpointed,
        to: &Path,
    ) -> Result<Carried, BoxError> {
        let meta = self.archive_meta(cp)?;
        let route = self.route.as_ref().ok_or("the registry was not started")?;
        let (a, b) = &route.clients;
        let (reference, facts) = (&route.reference, &route.facts);
        let pushed = hosts.a.run(|| {
            let images = criu::ImagesDir::open(&cp.images)?;
            a.push_checkpoint(reference, &images, &meta, facts, Compression::None)
        })??;
        if self.tamper {
            flip_a_byte(&route.registry.blob_path(&pushed.layer_digest))?;
        }
        // Beside `to`: the daemon's data root is a file system of its own
        // (a rename from elsewhere crosses devices).
        let work = to.with_extension("pulled");
        let pulled = hosts
            .b
            .run(|| b.pull_checkpoint(reference, facts, &work, &Limits::default()))??;
        let images = pulled.unpacked.images()?;
        let placed = fs::rename(images.path(), to);
        let _ = fs::remove_dir_all(&work);
        placed.map_err(|e| format!("moving the pulled checkpoint to {}: {e}", to.display()))?;
        Ok(Carried {
            bytes: pushed.push.layer_bytes,
            elapsed: pushed.push.elapsed + pulled.pull.elapsed,
            registry: Some(RegistryCost {
                pack_ms: ms(pushed.pack),
                push_ms: ms(pushed.push.elapsed),
                pull_ms: ms(pulled.pull.elapsed),
                unpack_ms: ms(pulled.unpack),
                image_bytes: pushed.push.layer_bytes,
            }),
        })
    }

    fn restore(&mut self, hosts: &TwoHosts, images: &Path) -> Result<Restored, BoxError> {
        self.docker.restore(hosts, images)
    }

    fn recover(&mut self, hosts: &TwoHosts) -> Result<(), BoxError> {
        self.docker.recover(hosts)
    }
}

fn flip_a_byte(path: &Path) -> Result<(), BoxError> {
    let mut data = fs::read(path)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(path, data)?;
    Ok(())
}
