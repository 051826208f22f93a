//! The control messages between the two sides, sent as the image stream's
//! message frames (see [`crate::transfer`]) on the same stream as the
//! images.
//!
//! One migration, in order (`→` from the source, `←` from the destination):
//!
//! ```text
//! → header, Hello { strategy }
//! ← PageServerReady { port } | Failed        (page-server only)
//! → the images (a transfer stream; stop-and-copy's starts during the dump) | Failed
//! → LazySource { addr }                      (lazy only)
//! ← Restored { .. } | Failed
//! → Done | Failed                            (Failed: an abort)
//! ← Kept | Failed
//! ```
//!
//! The end is built so that a lost message makes a duplicate, never a
//! loss. The destination, once it has restored (and continued) its copy,
//! keeps it unless the source explicitly aborts: `Done`, silence or a
//! broken stream all keep it. The source stops its own copy for good only
//! after `Kept`; without it, it resumes its copy, and both may then run
//! (the source's error says so, and [`super::DestReport::source_confirmed`]
//! is false on the destination).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::strategy::Strategy;
use crate::error::{Error, Result};
use crate::transfer::{self, Transport};

/// One control message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    /// The source's first message.
    Hello { strategy: Strategy },
    /// The destination's page server listens on this port.
    PageServerReady { port: u16 },
    /// The lazy dump serves its pages at this address.
    LazySource { addr: SocketAddr },
    /// The destination restored the tree (and continued it).
    Restored {
        pid: i32,
        wall_us: u64,
        restore_time_us: Option<u64>,
    },
    /// The sender failed; the message says why.
    Failed { message: String },
    /// The source is about to stop its copy for good.
    Done,
    /// The destination keeps its restored copy; the source may kill its own.
    Kept,
}

pub(super) fn send(stream: &mut dyn Transport, msg: &Msg) -> Result<()> {
    transfer::send_message(&mut &mut *stream, msg)
}

pub(super) fn recv(stream: &mut dyn Transport) -> Result<Msg> {
    transfer::recv_message(&mut &mut *stream)
}

/// Tells the peer why this side failed. Best effort: the peer or the
/// stream may be gone already, which is then the peer's own error.
pub(super) fn tell_failure(stream: &mut dyn Transport, e: &Error) {
    let _ = send(
        stream,
        &Msg::Failed {
            message: e.to_string(),
        },
    );
}

/// A migration error.
pub(super) fn migration(message: impl Into<String>, source: Option<Error>) -> Error {
    Error::Migration {
        message: message.into(),
        source: source.map(Box::new),
    }
}

/// The error for a message other than the one the protocol expects here.
pub(super) fn unexpected(expected: &str, got: &Msg) -> Error {
    migration(format!("expected {expected}, got {got:?}"), None)
}
