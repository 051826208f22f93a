//! Checkpoints in the container world's formats, for criu-rs.
//!
//! * [`archive`]: checkpoint archives in the layout Podman, CRI-O and
//!   checkpointctl use (`checkpoint/` with CRIU's images, `config.dump`,
//!   `spec.dump`, `stats-dump`, `dump.log`...), written from an
//!   [`criu::ImagesDir`] and unpacked safely.
//! * [`image`]: such an archive as a one-layer OCI image carrying the
//!   `org.criu.checkpoint.*` [`annotations`] (Podman's, CRI-O's and
//!   containerd's own sets are read too).
//! * [`registry`]: pushing and pulling those images over the OCI
//!   distribution API (basic auth, TLS with a private CA), every blob
//!   checked against its digest, checkpoints streamed both ways with
//!   bounded memory; [`layout`]: the same image as an OCI image layout
//!   directory (sizes checked before anything is read); [`parts`]: a
//!   migration image's pages pushed in parts while CRIU writes them.
//! * [`migrate`]: a tree moved through a registry, its source kept
//!   stopped, not killed, until the destination has restored it (with
//!   criu-rs's `criu::migrate::hold`); [`strategy`]: the same route as a
//!   strategy of `criu::migrate` ([`strategy::PushTo`],
//!   [`strategy::PullFrom`]), run over a migration's stream with
//!   `criu::migrate::send_with` / `receive_with`.
//!
//! # Through a cluster's own registry
//!
//! ```no_run
//! use criu_oci::migrate::{checkpoint_and_push, pull_and_restore, PushTo};
//! use criu_oci::{Compression, Limits, Registry, RegistryConfig};
//! # fn main() -> criu_oci::Result<()> {
//! let config = RegistryConfig {
//!     ca_pem: Some(std::fs::read("/etc/pki/cluster-ca.pem").unwrap()),
//!     basic_auth: Some(("ci".into(), std::env::var("REGISTRY_PASSWORD").unwrap())),
//!     ..RegistryConfig::default()
//! };
//! let registry = Registry::new(&config)?;
//! let criu = criu::Criu::new();
//! let reference = "registry.cluster.local:5000/checkpoints/counter:1";
//! // Node A: the tree is dumped and left stopped, not killed.
//! let to = PushTo { registry: &registry, reference, compression: Compression::None };
//! let pushed = checkpoint_and_push(&criu, 4242, "counter", "/var/tmp/a".as_ref(), &to, |_| {})?;
//! // Node B (another process, on another machine): pull, check, restore.
//! let restored = pull_and_restore(&criu, &registry, reference, "/var/tmp/b".as_ref(), &Limits::default(), |_| {})?;
//! // Only once B has restored does A's copy go; dropping `pushed` instead resumes it.
//! pushed.finish();
//! # drop(restored); Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod annotations;
pub mod archive;
mod error;
mod fetch;
pub mod image;
pub mod layout;
pub mod migrate;
pub mod parts;
pub mod registry;
pub mod strategy;
mod stream;

pub use annotations::HostFacts;
pub use archive::{ArchiveMeta, Compression, Limits, Unpacked};
pub use error::{Error, Result};
pub use image::{CheckpointImage, FetchedImage};
pub use registry::{PulledCheckpoint, PushedCheckpoint, Registry, RegistryConfig, Transfer};
