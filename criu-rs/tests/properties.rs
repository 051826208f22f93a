//! Property tests of the parsers of untrusted bytes: CRIU's statistics
//! images and the image-transfer stream (whole files, and files sent while
//! they grow). No input may panic; a stream that
//! is truncated or damaged anywhere must be rejected without leaving
//! anything behind.

use std::collections::BTreeMap;
use std::path::Path;

use criu::transfer::{read_header, receive_dir, send_dir, write_header, Growing};
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

/// The stream of `files`; `growing`: sent as `Growing` does while a dump
/// writes them, one file after the other (as CRIU writes its pages
/// images), each in two halves with a step after each.
fn stream_of(files: &BTreeMap<String, Vec<u8>>, growing: bool) -> (tempfile::TempDir, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let mut bytes = std::io::Cursor::<Vec<u8>>::default();
    write_header(&mut bytes).unwrap();
    if !growing {
        for (name, data) in files {
            std::fs::write(src.path().join(name), data).unwrap();
        }
        send_dir(&mut bytes, src.path(), None).unwrap();
        return (src, bytes.into_inner());
    }
    let mut g = Growing::new(&mut bytes, src.path(), |_| true, None);
    for (name, data) in files {
        let mut f = std::fs::File::create(src.path().join(name)).unwrap();
        let (first, second) = data.split_at(data.len() / 2);
        for half in [first, second] {
            std::io::Write::write_all(&mut f, half).unwrap();
            g.step().unwrap();
        }
    }
    g.finish().unwrap();
    (src, bytes.into_inner())
}

fn receive(bytes: &[u8], parent: &Path) -> criu::Result<()> {
    let mut r = bytes;
    read_header(&mut r)?;
    receive_dir(&mut r, &parent.join("images"), None).map(|_| ())
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
    fn streams_round_trip(files in files(), growing in any::<bool>()) {
        let (_src, bytes) = stream_of(&files, growing);
        let parent = tempfile::tempdir().unwrap();
        receive(&bytes, parent.path()).unwrap();
        for (name, data) in &files {
            prop_assert_eq!(&std::fs::read(parent.path().join("images").join(name)).unwrap(), data);
        }
        prop_assert_eq!(std::fs::read_dir(parent.path().join("images")).unwrap().count(), files.len());
    }

    #[test]
    fn truncated_streams_are_rejected_and_leave_nothing(files in files(), cut in any::<prop::sample::Index>(), growing in any::<bool>()) {
        let (_src, bytes) = stream_of(&files, growing);
        let cut = cut.index(bytes.len());
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes[..cut], parent.path()).is_err());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn any_damaged_byte_is_detected(files in files(), at in any::<prop::sample::Index>(), flip in 1u8..=255, growing in any::<bool>()) {
        let (_src, mut bytes) = stream_of(&files, growing);
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes, parent.path()).is_err(), "damage at byte {} of {} went unnoticed", at, bytes.len());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
