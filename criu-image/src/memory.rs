//! A task's dumped memory: `pagemap-PID.img` says which virtual ranges were
//! dumped and in what order; their pages lie back to back in the raw
//! `pages-ID.img` the pagemap's head names.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::proto::{PagemapEntry, PagemapHead};

const PAGE_SIZE: u64 = 4096;
const PE_PRESENT: u32 = 1 << 2;
const PE_PARENT: u32 = 1 << 0;

/// A dumped range: `pages` pages from `vaddr`, at `offset` in the pages file
/// when its data is in this checkpoint. Built only by [`Range::checked`], so
/// `vaddr + len` and `offset + len` never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    vaddr: u64,
    pages: u64,
    offset: Option<u64>,
}

impl Range {
    /// The range of pagemap entry `e`, whose data (if present) starts at
    /// `offset` of the pages file; `None` when any end of it overflows.
    fn checked(e: &PagemapEntry, offset: u64) -> Option<Range> {
        let pages = pages(e);
        let len = pages.checked_mul(PAGE_SIZE)?;
        e.vaddr.checked_add(len)?;
        let offset = if present(e) {
            offset.checked_add(len)?;
            Some(offset)
        } else {
            None
        };
        Some(Range {
            vaddr: e.vaddr,
            pages,
            offset,
        })
    }

    /// Its length in bytes (fits: see [`Range::checked`]).
    fn len(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    /// One past its last address (fits: see [`Range::checked`]).
    fn end(&self) -> u64 {
        self.vaddr + self.len()
    }
}

/// The pages an entry covers (`nr_pages`, or the old `compat_nr_pages`).
fn pages(e: &PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages))
}

/// The dumped memory of one task.
#[derive(Debug)]
pub struct Memory {
    pages_path: PathBuf,
    ranges: Vec<Range>,
}

impl Memory {
    /// Opens the memory of `pid` in the images directory `dir`.
    pub fn open(dir: impl AsRef<Path>, pid: u32) -> Result<Memory> {
        let dir = dir.as_ref();
        let pagemap_path = dir.join(format!("pagemap-{pid}.img"));
        let pagemap = Image::open(&pagemap_path)?;
        let bad = |why: String| Error::at(0, ErrorKind::Invalid(why)).in_file(&pagemap_path);
        let (head, body) = pagemap
            .entries
            .split_first()
            .ok_or_else(|| bad("a pagemap without its head".into()))?;
        let head: PagemapHead = head.decode().map_err(|e| bad(e.to_string()))?;
        let mut ranges = Vec::new();
        let mut offset = 0u64;
        for (i, e) in body.iter().enumerate() {
            let e: PagemapEntry = e.decode().map_err(|e| bad(e.to_string()))?;
            let range = Range::checked(&e, offset).ok_or_else(|| {
                bad(format!(
                    "pagemap entry {} ({:#x}, {} pages) runs past the end of the \
                     address space or of any pages file: the image is damaged",
                    i + 1,
                    e.vaddr,
                    pages(&e)
                ))
            })?;
            if let Some(start) = range.offset {
                // `checked` proved start + len fits.
                offset = start + range.len();
            }
            ranges.push(range);
        }
        Ok(Memory {
            pages_path: dir.join(format!("pages-{}.img", head.pages_id)),
            ranges,
        })
    }

    /// Bytes dumped into this checkpoint (not those left in a parent).
    pub fn dumped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.offset.is_some())
            .fold(0u64, |sum, r| sum.saturating_add(r.len()))
    }

    /// Reads `[start, end)`; every byte must be in this checkpoint's pages.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        const LIMIT: u64 = 64 << 20;
        let invalid = |why: String| Error::at(0, ErrorKind::Invalid(why)).in_file(&self.pages_path);
        if end < start || end - start > LIMIT {
            return Err(invalid(format!(
                "refusing to read {start:#x}..{end:#x} (more than 64 MiB or reversed)"
            )));
        }
        let mut file = File::open(&self.pages_path)
            .map_err(|e| Error::at(0, ErrorKind::Io(e)).in_file(&self.pages_path))?;
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut at = start;
        while at < end {
            let (range, file_offset) = self.locate(at).ok_or_else(|| {
                invalid(format!(
                    "address {at:#x} was not dumped into this checkpoint"
                ))
            })?;
            // `locate` found `at` inside the range: `at < range.end()`.
            let n = range.end().min(end) - at;
            let mut buf = vec![0; n as usize];
            file.seek(SeekFrom::Start(file_offset))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| Error::at(file_offset, ErrorKind::Io(e)).in_file(&self.pages_path))?;
            out.extend_from_slice(&buf);
            at += n;
        }
        Ok(out)
    }

    fn locate(&self, addr: u64) -> Option<(Range, u64)> {
        self.ranges.iter().find_map(|r| {
            let inside = addr >= r.vaddr && addr < r.end();
            match (inside, r.offset) {
                // `off + len` fits (`Range::checked`), and `addr - vaddr < len`.
                (true, Some(off)) => Some((*r, off + (addr - r.vaddr))),
                _ => None,
            }
        })
    }
}

/// Whether a pagemap entry's pages are in this checkpoint's pages file
/// (newer images say so with `PE_PRESENT`; older ones with `in_parent`).
fn present(e: &PagemapEntry) -> bool {
    match e.flags {
        Some(flags) => flags & PE_PRESENT != 0 && flags & PE_PARENT == 0,
        None => !e.in_parent.unwrap_or(false),
    }
}
