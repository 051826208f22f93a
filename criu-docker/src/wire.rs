//! The messages between the two sides, and how they are framed: the
//! stream starts with this protocol's header, then the messages below
//! and, once, the checkpoint directory as criu-rs's image stream carries it
//! (`criu::transfer::send_dir`, read by `criu::transfer::receive_dir`).
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
//! A message is `len:u32` (little-endian) and that many bytes of JSON.
//! The source removes its container only after `Kept`; the destination
//! keeps its copy unless the source aborts before `Done`.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

/// The first bytes of the stream: the protocol and its version.
const HEADER: &[u8; 8] = b"CRIUDK\x00\x01";
/// The longest message accepted (a container's configuration is a few KiB).
const MAX_MESSAGE: u32 = 1 << 20;

/// A failure of the stream itself (the peer went away, a timeout).
fn stream(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Transfer(criu::Error::io(what, e))
}

/// Writes the stream's header. Called once per stream, by the source.
pub(crate) fn write_header(w: &mut impl Write) -> Result<()> {
    w.write_all(HEADER)
        .map_err(stream("sending the header to the destination"))
}

/// Reads and checks the stream's header.
pub(crate) fn read_header(r: &mut impl Read) -> Result<()> {
    let mut got = [0u8; 8];
    r.read_exact(&mut got)
        .map_err(stream("reading the header from the source"))?;
    if &got != HEADER {
        return Err(Error::Protocol(
            "the peer does not speak criu-docker's protocol (bad header): is it \
             `criu-rs receive --docker` of the same version?"
                .into(),
        ));
    }
    Ok(())
}

/// Sends one message.
pub(crate) fn send_message<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<()> {
    let body =
        serde_json::to_vec(msg).map_err(|e| Error::Protocol(format!("encoding a message: {e}")))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or_else(|| Error::Protocol(format!("a message of {} bytes is too long", body.len())))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(stream("sending a message to the peer"))
}

/// Receives one message.
pub(crate) fn recv_message<T: DeserializeOwned>(r: &mut impl Read) -> Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(stream("reading a message from the peer"))?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(Error::Protocol(format!(
            "the peer announced a message of {len} bytes (at most {MAX_MESSAGE})"
        )));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(stream("reading a message from the peer"))?;
    serde_json::from_slice(&body)
        .map_err(|e| Error::Protocol(format!("decoding a message from the peer: {e}")))
}

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
