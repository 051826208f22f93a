//! A real OCI registry for tests, and moves through it.
//!
//! * [`host`]: Debian's `docker-registry` in a third network namespace,
//!   bridged to both hosts of a [`crate::hosts::TwoHosts`].
//! * [`moves`]: a process tree or a container checkpointed and pushed on
//!   host a, pulled and restored on host b, with the cost.
//! * [`container`]: the busybox container moved that way, as a container
//!   [`crate::container::Engine`].
//! * [`docker`]: Docker's container moved that way (`docker checkpoint
//!   create` on a, `docker start --checkpoint` of a clone on b).
//! * [`tools`]: `skopeo` and `buildah` run against criu-oci's images.

pub mod container;
pub mod docker;
pub mod host;
pub mod moves;
pub mod tools;

pub use crate::container::RegistryCost;
pub use container::RegistryEngine;
pub use criu_oci::Compression;
pub use docker::DockerRegistryEngine;
pub use host::{unique_tag, RegistryHost, REGISTRY_ADDR};
pub use moves::{migrate_via_registry, migrate_via_registry_strategy, move_through_registry, Move};
