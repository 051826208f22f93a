//! The registry route as a migration strategy of criu-rs's
//! ([`criu::migrate::strategy`]): the source dumps with its tree held,
//! pushes the checkpoint as an OCI image (a plain layer's pages going up
//! in parts while CRIU writes them, see [`crate::parts`]; the rest once
//! the dump is over) and tells the destination, over
//! the migration's stream, which reference and layer it pushed; the
//! destination pulls it (every blob checked against its digest, the
//! annotations against this host, the layer's size against the source's
//! word), restores it, and only on its confirmation is the source copy
//! killed. If anything fails before that (the registry unreachable, say)
//! the source resumes where it was.
//!
//! ```no_run
//! use criu::migrate::{receive_with, send_with, DestConfig, SourceConfig, Strategy};
//! use criu_oci::strategy::{PullFrom, PushTo};
//! use criu_oci::{Compression, Limits, Registry, RegistryConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new(&RegistryConfig::default())?;
//! let criu = criu::Criu::new();
//! // Node A, with a stream to node B:
//! # let mut stream = std::net::TcpStream::connect("10.0.0.2:7000")?;
//! let mut push = PushTo::new(&registry, "registry.local:5000/moves/counter:1", "counter")
//!     .compression(Compression::None);
//! let sent = send_with(&criu, 4242, &mut stream, SourceConfig::new(Strategy::StopAndCopy), &mut push)?;
//! // Node B, with the other end of the stream:
//! let mut pull = PullFrom::new(&registry, "registry.local:5000/moves/", Limits::default());
//! let received = receive_with(&criu, &mut stream, DestConfig::new(), &mut pull)?;
//! # drop((sent, received)); Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use criu::migrate::strategy::{
    Dest, DestStrategy, DumpPlan, Received, Restored, Running, Source, SourceStrategy,
};
use criu::{MigrationError, SourceState, Step};
use serde::{Deserialize, Serialize};

use crate::annotations::HostFacts;
use crate::archive::{ArchiveMeta, Compression, Limits};
use crate::registry::Registry;

/// The strategy's name, in the migration's hello.
pub const NAME: &str = "registry";

/// The strategy's own message, from the source.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// The checkpoint image was pushed as `reference`; its layer is
    /// `layer_bytes` long, of digest `layer_digest`.
    Pushed {
        reference: String,
        layer_digest: String,
        layer_bytes: u64,
    },
}

/// The source side: dumps the tree (held), pushes it to a registry as a
/// checkpoint image, and tells the destination where.
#[derive(Debug)]
pub struct PushTo<'r> {
    registry: &'r Registry,
    reference: String,
    name: String,
    compression: Compression,
    pushed: Option<crate::registry::PushedCheckpoint>,
}

impl<'r> PushTo<'r> {
    /// Pushes to `reference` (`host:port/repo:tag`) through `registry`,
    /// naming the checkpoint `name` in its annotations; the layer is not
    /// compressed unless [`PushTo::compression`] says so (gzip's time
    /// would be downtime).
    pub fn new(registry: &'r Registry, reference: &str, name: &str) -> PushTo<'r> {
        PushTo {
            registry,
            reference: reference.to_string(),
            name: name.to_string(),
            compression: Compression::None,
            pushed: None,
        }
    }

    /// The layer's compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// What the push did, once the migration pushed.
    pub fn pushed(&self) -> Option<&crate::registry::PushedCheckpoint> {
        self.pushed.as_ref()
    }
}

impl SourceStrategy for PushTo<'_> {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&mut self, source: &mut Source<'_>) -> criu::Result<Restored> {
        let meta = ArchiveMeta::of_process(source.pid(), &self.name);
        let host = HostFacts::current(source.criu()).map_err(|e| {
            typed(
                e,
                Step::Handshake,
                SourceState::Untouched,
                "reading this host's facts for the checkpoint's annotations",
            )
        })?;
        let dump = source.dump(DumpPlan::new())?;
        let failed = |e| {
            typed(
                e,
                Step::Transfer,
                SourceState::Resumed,
                &format!("pushing the checkpoint to {}", self.reference),
            )
        };
        let (images, pushed) = match self.compression {
            // The pages go up while CRIU writes them.
            Compression::None => {
                let dir = dump.dir();
                self.registry
                    .push_checkpoint_while(&self.reference, dir, &meta, &host, || {
                        Ok(source.images_ready(dump)?)
                    })
                    .map_err(failed)?
            }
            _ => {
                let images = source.images_ready(dump)?;
                let pushed = self
                    .registry
                    .push_checkpoint(
                        &self.reference,
                        images.dir(),
                        &meta,
                        &host,
                        self.compression,
                    )
                    .map_err(failed)?;
                (images, pushed)
            }
        };
        source.step(Step::Transfer);
        source.send(&Own::Pushed {
            reference: self.reference.clone(),
            layer_digest: pushed.layer_digest.clone(),
            layer_bytes: pushed.push.layer_bytes,
        })?;
        let bytes = pushed.push.layer_bytes;
        self.pushed = Some(pushed);
        let restored = source.await_restore(images)?;
        Ok(restored.carried_beside(bytes))
    }
}

/// What the destination pulled.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference the source pushed.
    pub reference: String,
    /// The layer's digest, as the source pushed it.
    pub layer_digest: String,
    /// The pull.
    pub pull: crate::registry::Transfer,
}

/// The destination side: pulls what the source pushed (from one
/// repository prefix only), checks it, and restores it.
#[derive(Debug)]
pub struct PullFrom<'r> {
    registry: &'r Registry,
    prefix: String,
    limits: Limits,
    pulled: Option<Pulled>,
}

impl<'r> PullFrom<'r> {
    /// Pulls through `registry` references that start with `prefix`
    /// (`host:port/repo/`, say: a source cannot send this host elsewhere),
    /// unpacking within `limits`.
    pub fn new(registry: &'r Registry, prefix: &str, limits: Limits) -> PullFrom<'r> {
        PullFrom {
            registry,
            prefix: prefix.to_string(),
            limits,
            pulled: None,
        }
    }

    /// What was pulled, once the migration pulled.
    pub fn pulled(&self) -> Option<&Pulled> {
        self.pulled.as_ref()
    }
}

impl DestStrategy for PullFrom<'_> {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&mut self, dest: &mut Dest<'_>) -> criu::Result<Running> {
        let Own::Pushed {
            reference,
            layer_digest,
            layer_bytes,
        } = dest.recv()?;
        if !reference.starts_with(&self.prefix) || reference.contains("..") {
            return Err(refused(format!(
                "the source pushed {reference}, outside {}: refused (PullFrom::new names the \
                 repositories this host pulls from)",
                self.prefix
            )));
        }
        let host = HostFacts::current(dest.criu()).map_err(|e| {
            typed(
                e,
                Step::Transfer,
                SourceState::Unknown,
                "reading this host's facts",
            )
        })?;
        let target = fresh(dest.work_dir(), "archive")?;
        // Removed if the migration fails from here on.
        dest.created(&target);
        dest.created(&criu_work_path(&target));
        let pulled = self
            .registry
            .pull_checkpoint(&reference, &host, &target, &self.limits)
            .map_err(|e| {
                typed(
                    e,
                    Step::Transfer,
                    SourceState::Unknown,
                    &format!("pulling {reference}"),
                )
            })?;
        if pulled.pull.layer_bytes != layer_bytes {
            return Err(refused(format!(
                "{reference} holds a layer of {} bytes, and the source pushed {layer_bytes} \
                 ({layer_digest}): the image changed in the registry",
                pulled.pull.layer_bytes
            )));
        }
        let step = |e| {
            typed(
                e,
                Step::Restore,
                SourceState::Unknown,
                "opening the pulled images",
            )
        };
        let images = pulled.unpacked.images().map_err(step)?;
        // CRIU's log goes beside the unpacked tree, never into it.
        let work = pulled.unpacked.criu_work_dir().map_err(step)?;
        let mut transfer = criu::transfer::TransferStats::default();
        transfer.bytes = pulled.pull.layer_bytes;
        transfer.elapsed = pulled.pull.elapsed;
        self.pulled = Some(Pulled {
            reference,
            layer_digest,
            pull: pulled.pull,
        });
        let received = Received::new(images, transfer).criu_work_dir(work);
        dest.restore(received, |_| {})
    }
}

/// `dir/name`, which must not exist yet (it will be removed on failure,
/// so it must be this migration's own).
fn fresh(dir: &Path, name: &str) -> criu::Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        return Err(refused(format!(
            "{} exists already; the registry strategy unpacks into a path of its own (choose \
             another DestConfig::work_dir)",
            path.display()
        )));
    }
    Ok(path)
}

/// Where `Unpacked::criu_work_dir` puts CRIU's work directory for an
/// archive unpacked at `target`.
fn criu_work_path(target: &Path) -> PathBuf {
    let mut path = target.as_os_str().to_owned();
    path.push(".criu-work");
    path.into()
}

/// A criu-oci error as a migration error at `step` with the source in
/// `state` (a criu-rs error inside it stays what it is).
fn typed(e: crate::Error, step: Step, state: SourceState, what: &str) -> criu::Error {
    let cause = match e {
        crate::Error::Criu(c) if c.migration_error().is_some() => return c,
        crate::Error::Criu(c) => c,
        other => criu::Error::io(what, std::io::Error::other(other)),
    };
    let resumed = match state {
        SourceState::Untouched => "; the source process was not touched",
        SourceState::Resumed => "; the source process was resumed",
        _ => "",
    };
    criu::Error::migration(
        MigrationError::new(step, state, format!("{what} failed{resumed}")),
        Some(cause),
    )
}

/// The destination's refusal of what the source sent.
fn refused(message: String) -> criu::Error {
    criu::Error::migration(
        MigrationError::new(Step::Transfer, SourceState::Unknown, message),
        None,
    )
}
