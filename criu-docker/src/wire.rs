//! The messages between the two sides, as criu-rs's image stream frames
//! them (`criu::transfer::send_message`): the stream starts with its
//! header, then the messages below and, once, the checkpoint directory.
//!
//! ```text
//! source                          destination
//! header, Offer(spec)       ->
//!                           <-    NeedImage (only if offered a registry)
//! Pushed(reference)         ->    (or Abort: the push failed)
//!                           <-    Accepted (container created) | Refused
//! Checkpointed, directory   ->    (or Abort: the checkpoint failed)
//!                           <-    Restored (it runs) | Failed
//! Done                      ->
//!                           <-    Kept
//! ```
//!
//! The source removes its container only after `Kept`; the destination
//! keeps its copy unless the source aborts before `Done`.

use serde::{Deserialize, Serialize};

use crate::spec::ContainerSpec;

/// What the source says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub(crate) enum FromSource {
    /// The container to move, and the checkpoint's name.
    Offer {
        spec: Box<ContainerSpec>,
        checkpoint: String,
        /// Whether the source can push the image through a registry.
        #[serde(default)]
        registry: bool,
    },
    /// The image is in the registry: pull this reference.
    Pushed { reference: String },
    /// The checkpoint is made; its directory follows.
    Checkpointed,
    /// The source gives up (its container runs).
    Abort { reason: String },
    /// The source stops its copy for good.
    Done,
}

/// What the destination says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "dest", rename_all = "snake_case")]
pub(crate) enum FromDest {
    /// Everything but the image is ready: push it through the registry.
    NeedImage,
    /// The container is created (not started) under this name.
    Accepted { name: String, id: String },
    /// Pre-flight failed: nothing was created.
    Refused { reasons: Vec<String> },
    /// The container runs from the checkpoint.
    Restored {
        restore_us: u64,
        restore_time_us: Option<u64>,
    },
    /// The restore failed; the destination removed its container.
    Failed { reason: String },
    /// The destination keeps its copy.
    Kept,
}
