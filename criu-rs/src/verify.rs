//! Checks a checkpoint before CRIU restores it, so that a damaged one is
//! refused in milliseconds with the file named, before anything starts
//! (CRIU 4.2.1's restorer spins forever on a truncated `pages-*.img`).
//!
//! Two checks: every image CRIU opens for the root task is present and not
//! empty (`inventory.img`, `pstree.img`, `core-PID.img`, `mm-PID.img`,
//! `pagemap-PID.img`), and every `pages-ID.img` holds exactly the pages its
//! `pagemap-*.img` announces as present. Formats from CRIU's
//! `images/pagemap.proto` and `criu/pagemap.c`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};
use criu_image::proto::{PagemapEntry, PagemapHead};

use crate::framing::{self, bad};
use crate::images::{read_at, root_pid_of, size_at, MAX_IMAGE_READ};
use crate::stats::page_size;

/// Pagemap entry flag: the pages are in the parent images.
const PE_PARENT: u32 = 1 << 0;
/// Pagemap entry flag: the pages are in this checkpoint's pages file.
const PE_PRESENT: u32 = 1 << 2;

/// Verifies the checkpoint in `dir` (see the module docs).
pub(crate) fn verify_images(dir: BorrowedFd<'_>) -> Result<()> {
    non_empty(dir, "inventory.img")?;
    non_empty(dir, "pstree.img")?;
    let pstree = read_image(dir, "pstree.img")?;
    let root = root_pid_of(&pstree)?;
    for kind in ["core", "mm", "pagemap"] {
        non_empty(dir, &format!("{kind}-{root}.img"))?;
    }
    for pagemap in pagemaps(dir)? {
        check_pages(dir, &pagemap)?;
    }
    Ok(())
}

/// The error for an image that is missing or empty.
fn missing(name: &str, how: &str) -> Error {
    bad(
        name,
        format!(
            "{how}: the checkpoint is incomplete or damaged and CRIU cannot restore it; \
             dump or copy it again (Options::verify_images(false) skips this check)"
        ),
    )
}

fn non_empty(dir: BorrowedFd<'_>, name: &str) -> Result<u64> {
    match size_at(dir, name) {
        Ok(Some(0)) => Err(missing(name, "the file is empty")),
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(missing(name, "the file is missing")),
        Err(e) => Err(Error::io(format!("checking {name}"), e)),
    }
}

fn read_image(dir: BorrowedFd<'_>, name: &str) -> Result<Vec<u8>> {
    read_at(dir, name, MAX_IMAGE_READ).map_err(|e| Error::io(format!("reading {name}"), e))
}

/// The names of the directory's `pagemap-*.img` files (shared-memory ones
/// included), sorted.
fn pagemaps(dir: BorrowedFd<'_>) -> Result<Vec<String>> {
    let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let entries =
        std::fs::read_dir(&listing).map_err(|e| Error::io("listing the images directory", e))?;
    let mut names: Vec<String> = entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(|e| Error::io("listing the images directory", e))?;
    names.retain(|n| n.starts_with("pagemap-") && n.ends_with(".img"));
    names.sort();
    Ok(names)
}

/// What a pagemap announces: its pages file's id and how many pages in it.
fn announced_pages(name: &str, bytes: &[u8]) -> Result<(u32, u64)> {
    let mut entries = framing::entries(name, bytes, "PAGEMAP")?;
    let head: PagemapHead = entries.first()?;
    let mut present: u64 = 0;
    while let Some(entry) = entries.next_entry::<PagemapEntry>() {
        let entry = entry?;
        if flags_of(&entry) & PE_PRESENT != 0 {
            let pages = entry.nr_pages.unwrap_or(u64::from(entry.compat_nr_pages));
            present = present
                .checked_add(pages)
                .ok_or_else(|| bad(name, "the page counts overflow"))?;
        }
    }
    Ok((head.pages_id, present))
}

/// An entry's flags as CRIU reads them: older images have no flags, and
/// mark pages in the parent with `in_parent` (init_compat_pagemap_entry).
fn flags_of(entry: &PagemapEntry) -> u32 {
    let flags = entry.flags.unwrap_or(0);
    if entry.in_parent == Some(true) {
        flags | PE_PARENT
    } else if entry.flags.is_none() {
        PE_PRESENT
    } else {
        flags
    }
}

/// Checks that the pages file of `pagemap` holds exactly its pages.
fn check_pages(dir: BorrowedFd<'_>, pagemap: &str) -> Result<()> {
    let (id, pages) = announced_pages(pagemap, &read_image(dir, pagemap)?)?;
    let name = format!("pages-{id}.img");
    let expected = pages
        .checked_mul(page_size())
        .ok_or_else(|| bad(pagemap, format!("{pages} pages is implausible")))?;
    let actual = match size_at(dir, &name) {
        Ok(size) => size,
        Err(e) => return Err(Error::io(format!("checking {name}"), e)),
    };
    match actual {
        Some(n) if n == expected => Ok(()),
        None if expected == 0 => Ok(()),
        None => Err(missing(
            &name,
            &format!("the file is missing, but {pagemap} announces {pages} page(s) in it"),
        )),
        Some(n) => Err(missing(
            &name,
            &format!(
                "the file has {n} bytes, but {pagemap} announces {pages} page(s) of {} bytes \
                 ({expected} bytes)",
                page_size()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::frame;
    use prost::Message;

    fn entry(nr: u64, flags: Option<u32>, in_parent: Option<bool>) -> Vec<u8> {
        PagemapEntry {
            vaddr: 0x1000,
            compat_nr_pages: nr as u32,
            in_parent,
            flags,
            nr_pages: Some(nr),
        }
        .encode_to_vec()
    }

    #[test]
    fn only_present_pages_count() {
        let head = PagemapHead { pages_id: 3 }.encode_to_vec();
        let bytes = frame(
            "PAGEMAP",
            &[
                head,
                entry(5, Some(PE_PRESENT), None),
                entry(7, Some(PE_PARENT), None),
                entry(11, Some(2), None), // lazy, not in the file
                entry(13, None, None),    // old image: present
                entry(17, None, Some(true)),
            ],
        );
        assert_eq!(announced_pages("pagemap-1.img", &bytes).unwrap(), (3, 18));
        let cut = &bytes[..bytes.len() - 2];
        let e = announced_pages("pagemap-1.img", cut).unwrap_err();
        assert!(e.to_string().contains("pagemap-1.img"), "{e}");
    }
}
