//! Property tests of streams whose files were sent while they grew
//! ([`Growing`], crate-internal), read by the public [`receive_dir`]:
//! they round-trip, and a stream cut or damaged anywhere is rejected
//! without leaving anything behind. (Whole files, through the public API
//! only: `criu-rs/tests/properties.rs`.)

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::Path;

use proptest::prelude::*;

use super::{receive_dir, write_header, Growing, Limits};

fn files() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        "[a-z0-9_.-]{1,20}",
        prop::collection::vec(any::<u8>(), 0..5000),
        0..6,
    )
    .prop_filter("plain names", |m| m.keys().all(|k| k != "." && k != ".."))
}

/// The stream of `files` as `Growing` sends them while a dump writes them,
/// one file after the other (as CRIU writes its pages images), each in two
/// halves with a step after each.
fn growing_stream(files: &BTreeMap<String, Vec<u8>>) -> (tempfile::TempDir, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let mut bytes = Cursor::<Vec<u8>>::default();
    write_header(&mut bytes).unwrap();
    let mut g = Growing::new(&mut bytes, src.path(), |_| true, None);
    for (name, data) in files {
        let mut f = std::fs::File::create(src.path().join(name)).unwrap();
        let (first, second) = data.split_at(data.len() / 2);
        for half in [first, second] {
            f.write_all(half).unwrap();
            g.step().unwrap();
        }
    }
    g.finish().unwrap();
    (src, bytes.into_inner())
}

fn receive(bytes: &[u8], parent: &Path) -> crate::Result<()> {
    receive_dir(
        &mut &bytes[..],
        &parent.join("images"),
        &Limits::default(),
        None,
    )
    .map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn growing_streams_round_trip(files in files()) {
        let (_src, bytes) = growing_stream(&files);
        let parent = tempfile::tempdir().unwrap();
        receive(&bytes, parent.path()).unwrap();
        for (name, data) in &files {
            prop_assert_eq!(&std::fs::read(parent.path().join("images").join(name)).unwrap(), data);
        }
        prop_assert_eq!(std::fs::read_dir(parent.path().join("images")).unwrap().count(), files.len());
    }

    #[test]
    fn truncated_growing_streams_are_rejected_and_leave_nothing(files in files(), cut in any::<prop::sample::Index>()) {
        let (_src, bytes) = growing_stream(&files);
        let cut = cut.index(bytes.len());
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes[..cut], parent.path()).is_err());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn any_damaged_byte_of_a_growing_stream_is_detected(files in files(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (_src, mut bytes) = growing_stream(&files);
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let parent = tempfile::tempdir().unwrap();
        prop_assert!(receive(&bytes, parent.path()).is_err(), "damage at byte {} of {} went unnoticed", at, bytes.len());
        prop_assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
