//! Checkpoints in the container world's formats, for criu-rs.
//!
//! * [`archive`]: checkpoint archives in the layout Podman, CRI-O and
//!   checkpointctl use (`checkpoint/` with CRIU's images, `config.dump`,
//!   `spec.dump`, `stats-dump`, `dump.log`...), written from an
//!   [`criu::ImagesDir`] and unpacked safely.
//! * [`image`]: such an archive as a one-layer OCI image carrying the
//!   `org.criu.checkpoint.*` [`annotations`].
//! * [`registry`]: pushing and pulling those images over the OCI
//!   distribution API (basic auth, TLS with a private CA), every blob
//!   checked against its digest; [`layout`]: the same image as an OCI
//!   image layout directory.
//! * [`source`]: keeping the checkpointed tree stopped, not killed, until
//!   the destination has restored it.

#![deny(missing_docs)]

pub mod annotations;
pub mod archive;
mod error;
pub mod image;
pub mod layout;
pub mod migrate;
pub mod registry;
pub mod source;

pub use annotations::HostFacts;
pub use archive::{ArchiveMeta, Compression, Limits, Unpacked};
pub use error::{Error, Result};
pub use image::{CheckpointImage, FetchedImage};
pub use registry::{Registry, RegistryConfig, Transfer};
