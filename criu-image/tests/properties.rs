//! Properties of the memory and inspection paths over generated (often
//! hostile) pagemaps and mm images: no panic, no overflow, and, where the
//! pagemap is sound, exactly the bytes a model of the format predicts.

use std::path::Path;

use criu_image::proto::{
    CoreEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry, TaskKobjIdsEntry, VmaEntry,
};
use criu_image::{magic, Checkpoint, Memory};
use proptest::prelude::*;
use prost::Message;

const PAGE: u64 = 4096;
const PE_PARENT: u32 = 1;
const PE_PRESENT: u32 = 4;
const PID: u32 = 7;
const PAGES_ID: u32 = 1;

/// An image file: the common magic, `name`'s magic, size-prefixed entries.
fn write_image(dir: &Path, file: &str, name: &str, entries: &[Vec<u8>]) {
    let mut data = magic::IMG_COMMON.to_le_bytes().to_vec();
    data.extend_from_slice(&magic::value_of(name).unwrap().to_le_bytes());
    for e in entries {
        data.extend_from_slice(&(e.len() as u32).to_le_bytes());
        data.extend_from_slice(e);
    }
    std::fs::write(dir.join(file), data).unwrap();
}

fn write_pagemap(dir: &Path, entries: &[PagemapEntry]) {
    let mut all = vec![PagemapHead { pages_id: PAGES_ID }.encode_to_vec()];
    all.extend(entries.iter().map(Message::encode_to_vec));
    write_image(dir, &format!("pagemap-{PID}.img"), "PAGEMAP", &all);
}

fn pages_file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn entry(vaddr: u64, pages: u64, flags: Option<u32>) -> PagemapEntry {
    PagemapEntry {
        vaddr,
        compat_nr_pages: pages as u32,
        in_parent: None,
        flags,
        nr_pages: Some(pages),
    }
}

fn flags() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        Just(Some(PE_PRESENT)),
        Just(Some(PE_PARENT)),
        Just(Some(2)),
        any::<u32>().prop_map(Some),
    ]
}

fn present(flags: Option<u32>) -> bool {
    flags.is_none_or(|f| f & PE_PRESENT != 0 && f & PE_PARENT == 0)
}

/// Any u64, biased towards the edges where arithmetic overflows.
fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..16,
        any::<u64>(),
        (0u64..4).prop_map(|d| u64::MAX - d),
        (0u64..4).prop_map(|d| (u64::MAX / PAGE) - d),
        (0u64..4).prop_map(|d| u64::MAX - d * PAGE - (PAGE - 1)),
    ]
}

/// Sound pagemaps: ranges in address order with gaps, so that every
/// address lies in at most one range.
fn sound_entries() -> impl Strategy<Value = Vec<PagemapEntry>> {
    prop::collection::vec((0u64..3, 0u64..4, flags()), 0..8).prop_map(|specs| {
        let mut page = 16;
        specs
            .into_iter()
            .map(|(gap, pages, flags)| {
                page += gap;
                let e = entry(page * PAGE, pages, flags);
                page += pages;
                e
            })
            .collect()
    })
}

/// What `addr` reads as under the model: the byte at its offset in the
/// pages file, if a present range holds it and the file is long enough.
fn model_byte(entries: &[PagemapEntry], file: &[u8], addr: u64) -> Option<u8> {
    let mut offset = 0u64;
    for e in entries {
        let len = e.nr_pages.unwrap() * PAGE;
        if present(e.flags) {
            if (e.vaddr..e.vaddr + len).contains(&addr) {
                return file.get((offset + addr - e.vaddr) as usize).copied();
            }
            offset += len;
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any entry, however large: `open` and `read` return, never panic or
    /// wrap; `open` refuses exactly the pagemaps whose ranges or pages-file
    /// offsets do not fit in 64 bits.
    #[test]
    fn hostile_pagemaps_are_errors_not_panics(
        specs in prop::collection::vec((edgy(), edgy(), flags()), 0..6),
        file_len in 0usize..3 * PAGE as usize,
        reads in prop::collection::vec((edgy(), 0u64..3 * PAGE), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = specs.iter().map(|&(v, p, f)| entry(v, p, f)).collect();
        write_pagemap(dir.path(), &entries);
        std::fs::write(dir.path().join("pages-1.img"), pages_file(file_len)).unwrap();
        // The model in u128: every range end and pages-file offset must fit.
        let mut offset: u128 = 0;
        let mut fits = true;
        for e in &entries {
            let len = u128::from(e.nr_pages.unwrap()) * u128::from(PAGE);
            fits &= len <= u128::from(u64::MAX)
                && u128::from(e.vaddr) + len <= u128::from(u64::MAX);
            if present(e.flags) {
                offset += len;
                fits &= offset <= u128::from(u64::MAX);
            }
        }
        match Memory::open(dir.path(), PID) {
            Ok(memory) => {
                prop_assert!(fits, "an overflowing pagemap was accepted");
                prop_assert_eq!(u128::from(memory.dumped_bytes()), offset);
                for (start, len) in reads {
                    let end = start.saturating_add(len);
                    if let Ok(bytes) = memory.read(start, end) {
                        prop_assert_eq!(bytes.len() as u64, end - start);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!fits, "a sound pagemap was refused: {}", e);
                prop_assert!(e.to_string().contains("pagemap-7.img"), "{}", e);
            }
        }
    }

    /// Sound pagemaps read exactly the model's bytes, and an address the
    /// model cannot serve (not dumped, in the parent, past the end of a
    /// short pages file) makes the whole read an error.
    #[test]
    fn sound_pagemaps_read_what_the_model_predicts(
        entries in sound_entries(),
        shortfall in 0usize..PAGE as usize * 2,
        start_page in 14u64..40,
        start_in_page in 0u64..PAGE,
        len in 0u64..3 * PAGE,
    ) {
        let dir = tempfile::tempdir().unwrap();
        write_pagemap(dir.path(), &entries);
        let dumped: u64 = entries
            .iter()
            .filter(|e| present(e.flags))
            .map(|e| e.nr_pages.unwrap() * PAGE)
            .sum();
        let file = pages_file((dumped as usize).saturating_sub(shortfall));
        std::fs::write(dir.path().join("pages-1.img"), &file).unwrap();
        let memory = Memory::open(dir.path(), PID).unwrap();
        prop_assert_eq!(memory.dumped_bytes(), dumped);
        let start = start_page * PAGE + start_in_page;
        let expected: Option<Vec<u8>> =
            (start..start + len).map(|a| model_byte(&entries, &file, a)).collect();
        match (memory.read(start, start + len), expected) {
            (Ok(got), Some(want)) => prop_assert_eq!(got, want),
            (Err(_), None) => {}
            (got, want) => prop_assert!(
                false,
                "read {:#x}+{}: got {:?}, the model says {:?}",
                start, len, got.map(|b| b.len()), want.map(|b| b.len())
            ),
        }
    }

    /// `Checkpoint::inspect` over a one-process checkpoint whose mm image
    /// lists any VMAs and argument bounds, and whose pagemap is hostile:
    /// it returns, the memory sums saturate instead of wrapping, and the
    /// process is there.
    #[test]
    fn inspect_survives_hostile_mm_and_pagemap(
        vmas in prop::collection::vec((edgy(), edgy(), any::<u32>()), 0..6),
        arg in (edgy(), edgy()),
        specs in prop::collection::vec((edgy(), edgy(), flags()), 0..4),
        file_len in 0usize..2 * PAGE as usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pstree = PstreeEntry { pid: PID, ppid: 0, pgid: PID, sid: PID, threads: vec![PID] };
        write_image(d, "pstree.img", "PSTREE", &[pstree.encode_to_vec()]);
        write_image(d, &format!("core-{PID}.img"), "CORE", &[CoreEntry::default().encode_to_vec()]);
        write_image(
            d,
            &format!("ids-{PID}.img"),
            "IDS",
            &[TaskKobjIdsEntry::default().encode_to_vec()],
        );
        let mm = MmEntry {
            mm_arg_start: arg.0,
            mm_arg_end: arg.1,
            mm_env_start: arg.1,
            mm_env_end: arg.0,
            vmas: vmas
                .iter()
                .map(|&(start, end, flags)| VmaEntry { start, end, flags, ..Default::default() })
                .collect(),
            ..Default::default()
        };
        write_image(d, &format!("mm-{PID}.img"), "MM", &[mm.encode_to_vec()]);
        let entries: Vec<_> = specs.iter().map(|&(v, p, f)| entry(v, p, f)).collect();
        write_pagemap(d, &entries);
        std::fs::write(d.join("pages-1.img"), pages_file(file_len)).unwrap();

        let inspection = Checkpoint::open(d).inspect().unwrap();
        prop_assert_eq!(inspection.processes.len(), 1);
        let memory = &inspection.processes[0].memory;
        let mapped = vmas
            .iter()
            .fold(0u64, |sum, &(start, end, _)| sum.saturating_add(end.saturating_sub(start)));
        prop_assert_eq!(memory.vmas, vmas.len());
        prop_assert_eq!(memory.mapped_bytes, mapped);
        prop_assert!(memory.anonymous_bytes <= mapped && memory.shared_bytes <= mapped);
    }
}
