//! Damaged and hostile images: decoding never panics, and every error names
//! an offset inside the image (that it never allocates what a hostile size
//! asks for is shown by `tests/allocation.rs`).

use criu_image::crit::{self, Style};
use criu_image::proto::{PipeDataEntry, PstreeEntry, TcpStreamEntry};
use criu_image::{magic, Image};
use proptest::prelude::*;
use prost::Message;

/// An image: the common magic, the image's own magic, then entries each
/// with a u32 size and, when given, raw payload bytes.
fn image(magic_name: &str, entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&magic::IMG_COMMON.to_le_bytes());
    out.extend_from_slice(&magic::value_of(magic_name).unwrap().to_le_bytes());
    for (message, payload) in entries {
        out.extend_from_slice(&(message.len() as u32).to_le_bytes());
        out.extend_from_slice(message);
        out.extend_from_slice(payload);
    }
    out
}

fn pstree(pid: u32) -> Vec<u8> {
    PstreeEntry {
        pid,
        ppid: 1,
        pgid: pid,
        sid: pid,
        threads: vec![pid, pid + 1],
    }
    .encode_to_vec()
}

fn pipe_data(bytes: u32) -> Vec<u8> {
    PipeDataEntry {
        pipe_id: 7,
        bytes,
        size: Some(65536),
    }
    .encode_to_vec()
}

#[test]
fn a_valid_image_decodes_typed_and_rendered() {
    let data = image("PSTREE", &[(pstree(10), vec![]), (pstree(20), vec![])]);
    let img = Image::decode(&data).unwrap();
    let typed: Vec<PstreeEntry> = img.typed().unwrap();
    assert_eq!(typed[1].threads, [20, 21]);
    let json = crit::render(&img, Style::Plain);
    assert_eq!(json["magic"], "PSTREE");
    assert_eq!(json["entries"][0]["threads"], serde_json::json!([10, 11]));
}

#[test]
fn a_payload_is_read_after_its_entry_and_shown_as_base64_lines() {
    let data = image("PIPES_DATA", &[(pipe_data(5), b"hello".to_vec())]);
    let json = crit::render(&Image::decode(&data).unwrap(), Style::Plain);
    assert_eq!(json["entries"][0]["extra"], "aGVsbG8=\n");
}

#[test]
fn a_payload_longer_than_the_image_is_refused_with_its_offset() {
    let data = image("PIPES_DATA", &[(pipe_data(u32::MAX), b"short".to_vec())]);
    let err = Image::decode(&data).unwrap_err();
    let entry_end = 8 + 4 + pipe_data(u32::MAX).len() as u64;
    assert_eq!(err.offset, entry_end, "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn tcp_queues_need_both_lengths_present() {
    let entry = TcpStreamEntry {
        inq_len: 3,
        outq_len: 4,
        ..Default::default()
    }
    .encode_to_vec();
    let ok = image("TCP_STREAM", &[(entry.clone(), b"abcdefg".to_vec())]);
    let json = crit::render(&Image::decode(&ok).unwrap(), Style::Plain);
    assert_eq!(json["entries"][0]["extra"]["inq"], "YWJj\n");
    assert_eq!(json["entries"][0]["extra"]["outq"], "ZGVmZw==\n");
    let short = image("TCP_STREAM", &[(entry, b"abcdef".to_vec())]);
    assert!(Image::decode(&short).is_err());
}

#[test]
fn raw_data_has_no_magic_and_says_so() {
    let err = Image::decode(&[0u8; 4096]).unwrap_err();
    assert!(err.to_string().contains("unknown magic 0x0"), "{err}");
}

fn check(data: &[u8]) {
    match Image::decode(data) {
        Ok(img) => {
            let _ = crit::render(&img, Style::Plain);
            let _ = crit::render(&img, Style::Pretty);
        }
        Err(e) => assert!(
            e.offset <= data.len() as u64,
            "{e} beyond {} bytes",
            data.len()
        ),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&data);
    }

    #[test]
    fn arbitrary_bodies_after_real_magics_never_panic(
        which in 0usize..criu_image::magic::MAGICS.len(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut data = magic::IMG_COMMON.to_le_bytes().to_vec();
        data.extend_from_slice(&criu_image::magic::MAGICS[which].1.to_le_bytes());
        data.extend_from_slice(&body);
        check(&data);
    }

    #[test]
    fn corrupting_a_valid_image_never_panics(
        at in 0usize..64,
        byte in any::<u8>(),
        cut in 0usize..80,
    ) {
        let mut data = image("PIPES_DATA", &[(pipe_data(5), b"hello".to_vec()), (pipe_data(2), b"hi".to_vec())]);
        let at = at % data.len();
        data[at] = byte;
        data.truncate(cut.min(data.len()));
        check(&data);
    }
}

/// A pagemap whose ranges overflow the address space, and pages that are
/// missing from the pages file, are errors, not panics.
#[test]
fn memory_from_a_hostile_pagemap_is_an_error() {
    use criu_image::proto::{PagemapEntry, PagemapHead};
    use criu_image::Memory;
    let dir = tempfile::tempdir().unwrap();
    let head = PagemapHead { pages_id: 1 }.encode_to_vec();
    let huge = PagemapEntry {
        vaddr: u64::MAX - 4095,
        compat_nr_pages: 0,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(2),
    }
    .encode_to_vec();
    let mut data = magic::IMG_COMMON.to_le_bytes().to_vec();
    data.extend_from_slice(&magic::value_of("PAGEMAP").unwrap().to_le_bytes());
    for m in [&head, &huge] {
        data.extend_from_slice(&(m.len() as u32).to_le_bytes());
        data.extend_from_slice(m);
    }
    std::fs::write(dir.path().join("pagemap-7.img"), &data).unwrap();
    std::fs::write(dir.path().join("pages-1.img"), [0u8; 100]).unwrap();
    let err = Memory::open(dir.path(), 7).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("pagemap-7.img") && text.contains("entry 1") && text.contains("damaged"),
        "{text}"
    );
    // A range at the top of the address space whose pages the file lacks.
    let short = PagemapEntry {
        vaddr: u64::MAX - 8191,
        nr_pages: Some(1),
        ..PagemapEntry::decode(huge.as_slice()).unwrap()
    }
    .encode_to_vec();
    let mut data = magic::IMG_COMMON.to_le_bytes().to_vec();
    data.extend_from_slice(&magic::value_of("PAGEMAP").unwrap().to_le_bytes());
    for m in [&head, &short] {
        data.extend_from_slice(&(m.len() as u32).to_le_bytes());
        data.extend_from_slice(m);
    }
    std::fs::write(dir.path().join("pagemap-7.img"), &data).unwrap();
    let memory = Memory::open(dir.path(), 7).unwrap();
    let err = memory.read(u64::MAX - 4200, u64::MAX - 4100).unwrap_err();
    assert!(err.to_string().contains("pages-1.img"), "{err}");
    let err = memory.read(u64::MAX - 10, u64::MAX).unwrap_err();
    assert!(err.to_string().contains("not dumped"), "{err}");
    assert!(
        memory.read(0, 1 << 40).is_err(),
        "more than 64 MiB at once is refused"
    );
    assert!(
        memory.read(4096, 8192).is_err(),
        "an address that was not dumped"
    );
}
