//! The control messages between the two sides, sent as the image stream's
//! message frames (see [`crate::transfer`]) on the same stream as the
//! images.
//!
//! One migration, in order (`→` from the source, `←` from the destination):
//!
//! ```text
//! → header, Hello { strategy, memory }
//! ↔ what the strategy sends, in its order: its own messages
//!   (`Strategy(..)`, say the page server's port, pre-copy's passes, the
//!   lazy source's address), directories, the images (a transfer
//!   stream) | Failed
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

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cancel::Cancel;
use crate::error::{Error, MigrationError, Result, SourceState, Step};
use crate::transfer::{self, DirOrMessage, Limits, TransferStats, Transport};

/// One control message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    /// The source's first message: the strategy, and how many bytes of
    /// memory the tree holds (an estimate of the pages the dump writes;
    /// absent from peers of before the field), which the destination
    /// checks against its limits before it takes any.
    Hello {
        /// The strategy's name (a built-in's is its `Strategy` name).
        strategy: String,
        #[serde(default)]
        memory: Option<u64>,
    },
    /// A message of the strategy's own (see `strategy::Source::send`):
    /// the driver carries it and does not look inside.
    Strategy(serde_json::Value),
    /// The destination restored the tree (and continued it).
    Restored {
        pid: i32,
        wall_us: u64,
        restore_time_us: Option<u64>,
    },
    /// The sender failed; the message says why. The source also says at
    /// which step, and what became of its process (absent from peers
    /// of before these fields: then unknown).
    Failed {
        message: String,
        #[serde(default)]
        step: Option<Step>,
        #[serde(default)]
        source_state: Option<SourceState>,
    },
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

/// Sends a message of a strategy's own.
pub(super) fn send_own<T: Serialize>(stream: &mut dyn Transport, msg: &T) -> Result<()> {
    let value = serde_json::to_value(msg)
        .map_err(|e| protocol(format!("encoding a strategy's message: {e}")))?;
    send(stream, &Msg::Strategy(value))
}

/// Receives a message of a strategy's own; the peer's `Failed` instead is
/// the error `failed` makes of its message, step and source state.
pub(super) fn recv_own<T: DeserializeOwned>(
    stream: &mut dyn Transport,
    failed: impl FnOnce(String, Option<Step>, Option<SourceState>) -> Error,
) -> Result<T> {
    match recv(stream)? {
        Msg::Strategy(value) => serde_json::from_value(value)
            .map_err(|e| protocol(format!("a strategy's message that does not parse: {e}"))),
        Msg::Failed {
            message,
            step,
            source_state,
        } => Err(failed(message, step, source_state)),
        other => Err(protocol(format!(
            "expected a strategy's message, got {other:?}"
        ))),
    }
}

/// A message that breaks the protocol.
fn protocol(message: String) -> Error {
    Error::Transfer {
        kind: crate::error::TransferKind::Protocol,
        message,
        source: None,
    }
}

/// Waits for the destination's restore: its root pid, its wall time and
/// CRIU's restore time. The errors say the source was resumed.
pub(super) fn await_restore(stream: &mut dyn Transport) -> Result<(i32, Duration, Option<u64>)> {
    match recv(stream) {
        Ok(Msg::Restored {
            pid,
            wall_us,
            restore_time_us,
        }) => Ok((pid, Duration::from_micros(wall_us), restore_time_us)),
        Ok(Msg::Failed { message, step, .. }) => Err(failed(
            step.unwrap_or(Step::Restore),
            SourceState::Resumed,
            format!("the destination failed: {message}; the source process was resumed"),
            None,
        )),
        Ok(other) => Err(failed(
            Step::Restore,
            SourceState::Resumed,
            format!("unexpected message {other:?}; the source process was resumed"),
            None,
        )),
        Err(e) => Err(failed(
            Step::Restore,
            SourceState::Resumed,
            "lost the destination before it restored; the source process was resumed",
            Some(e),
        )),
    }
}

/// Receives the images into `target`, or the source's reason when it
/// failed before it could send them (it sends `Failed` where they would
/// have started).
pub(super) fn receive_images(
    stream: &mut dyn Transport,
    target: &Path,
    limits: &Limits,
) -> Result<TransferStats> {
    match transfer::receive_dir_or_message(&mut &mut *stream, target, limits, None)? {
        DirOrMessage::Dir(stats) => Ok(stats),
        DirOrMessage::Message(Msg::Failed {
            message,
            step,
            source_state,
        }) => Err(failed(
            step.unwrap_or(Step::Transfer),
            source_state.unwrap_or(SourceState::Unknown),
            format!("the source failed before it sent the images: {message}"),
            None,
        )),
        DirOrMessage::Message(other) => Err(unexpected(
            Step::Transfer,
            SourceState::Unknown,
            "the images",
            &other,
        )),
    }
}

/// Tells the peer why this side failed. Best effort: the peer or the
/// stream may be gone already, which is then the peer's own error.
pub(super) fn tell_failure(stream: &mut dyn Transport, e: &Error) {
    let typed = e.migration_error();
    let _ = send(
        stream,
        &Msg::Failed {
            message: e.to_string(),
            step: typed.map(MigrationError::step),
            source_state: typed.map(MigrationError::source_state),
        },
    );
}

/// A migration error at `step`, with the source in `state`.
pub(super) fn failed(
    step: Step,
    state: SourceState,
    message: impl Into<String>,
    source: Option<Error>,
) -> Error {
    Error::migration(MigrationError::new(step, state, message), source)
}

/// The error of a migration cancelled at `step`, with the source in
/// `state`.
pub(super) fn cancelled(step: Step, state: SourceState) -> Error {
    Error::migration(
        MigrationError::new(step, state, "stopped on request").cancelled(),
        None,
    )
}

/// `Err` of [`cancelled`] if `cancel` was cancelled.
pub(super) fn check(cancel: &Cancel, step: Step, state: SourceState) -> Result<()> {
    match cancel.is_cancelled() {
        true => Err(cancelled(step, state)),
        false => Ok(()),
    }
}

/// `e` as a migration error: itself if it is one, else wrapped as the
/// failure of `step` with the source in `state`, saying `message`.
pub(super) fn at_step(
    e: Error,
    step: Step,
    state: SourceState,
    message: impl FnOnce() -> String,
) -> Error {
    match e {
        Error::Migration { .. } => e,
        other => failed(step, state, message(), Some(other)),
    }
}

/// The error of a stream that cannot tell its IP addresses (for CRIU's
/// own connections): after the hello, mostly a peer that closed or reset
/// the connection.
pub(super) fn no_addresses(e: std::io::Error) -> Error {
    Error::io(
        "reading the stream's IP addresses (for CRIU's own connections) after the hello",
        e,
    )
}

/// The error for a message other than the one the protocol expects here,
/// at `step` with the source in `state`.
pub(super) fn unexpected(step: Step, state: SourceState, expected: &str, got: &Msg) -> Error {
    failed(
        step,
        state,
        format!("expected {expected}, got {got:?}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_source_that_failed_before_its_images_is_heard_with_its_reason() {
        // Before: "image transfer: unexpected frame 0x4d".
        let (mut source, mut dest) = UnixStream::pair().unwrap();
        let refused = failed(Step::Dump, SourceState::Resumed, "the dump failed", None);
        tell_failure(&mut source, &refused);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("images");
        let e = receive_images(&mut dest, &target, &Limits::default()).unwrap_err();
        let m = e.migration_error().expect("a migration error");
        assert_eq!(m.step(), Step::Dump, "the source's step: {e}");
        assert_eq!(m.source_state(), SourceState::Resumed, "{e}");
        assert!(!target.exists(), "nothing received");
    }
}
