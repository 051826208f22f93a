//! Property tests of the parsers of untrusted bytes: CRIU's statistics
//! images and the image-transfer stream, through the public API. No input
//! may panic; a stream that is truncated or damaged anywhere must be
//! rejected without leaving anything behind.

use std::collections::BTreeMap;
use std::path::Path;

use criu::transfer::{receive_dir, send_dir, Limits};
use criu::Stats;
use proptest::prelude::*;

fn files() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        "[a-z0-9_.-]{1,20}",
        prop::collection::vec(any::<u8>(), 0..5000),
        0..6,
    )
    .prop_filter("plain names", |m| m.keys().all(|k| k != "." && k != ".."))
}

/// The stream `send_dir` makes of `files`. (Files sent while they grow,
/// as a migration sends CRIU's pages images, are tested inside the crate:
/// `transfer::properties`.)
fn stream_of(files: &BTreeMap<String, Vec<u8>>) -> (tempfile::TempDir, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(src.path().join(name), data).unwrap();
    }
    let mut bytes = Vec::new();
    send_dir(&mut bytes, src.path(), None).unwrap();
    (src, bytes)
}

fn receive(bytes: &[u8], parent: &Path) -> criu::Result<()> {
    receive_dir(
        &mut &bytes[..],
        &parent.join("images"),
        &Limits::default(),
        None,
    )
    .map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stats_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Stats::decode("stats-dump", &bytes);
    }

    #[test]
    fn stats_with_a_valid_header_and_any_body_never_panic(body in prop::collection::vec(any::<u8>(), 0..120)) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&criu::image::magic::IMG_SERVICE.to_le_bytes());
        bytes.extend_from_slice(&criu::image::magic::value_of("STATS").unwrap().to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = Stats::decode("stats-dump", &bytes);
    }

    #[test]
    fn any_stream_is_received_or_rejected_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let parent = tempfile::tempdir().unwrap();
        let mut input = b"CRIURS\x00\x01".to_vec();
        input.extend_from_slice(&bytes);
        match receive(&input, parent.path()) {
            Ok(()) => prop_assert!(parent.path().join("images").is_dir()),
            Err(_) => prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0),
        }
    }

    #[test]
    fn streams_round_trip(files in files()) {
        let (_src, bytes) = stream_of(&files);
        let parent = tempfile::tempdir().unwrap();
        receive(&bytes, parent.path()).unwrap();
        for (name, data) in &files {
            prop_assert_eq!(&std::fs::read(parent.path().join("images").join(name)).unwrap(), data);
        }
        prop_assert_eq!(std::fs::read_dir(parent.path().join("images")).unwrap().count(), files.len());
    }

    #[test]
    fn truncated_streams_are_rejected_and_leave_nothing(files in files(), cut in any::<prop::sample::Index>()) {
        let (_src, bytes) = stream_of(&files);
        let cut = cut.index(bytes.len());
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes[..cut], parent.path()).is_err());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn any_damaged_byte_is_detected(files in files(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (_src, mut bytes) = stream_of(&files);
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes, parent.path()).is_err(), "damage at byte {} of {} went unnoticed", at, bytes.len());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
