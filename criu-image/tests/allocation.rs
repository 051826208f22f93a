//! A hostile size never makes the decoder allocate it: a global allocator
//! that remembers the largest single request made on each thread shows
//! what decoding a tiny image with a 4 GiB size asked for. (An allocation
//! of 4 GiB would succeed here, memory being overcommitted, so only the
//! request itself shows the defect.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use criu_image::proto::PipeDataEntry;
use criu_image::{magic, Image};
use prost::Message;

struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the slot may be gone while the thread exits.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping touches only a const-initialised thread-local Cell, which
// does not allocate.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The largest single allocation `f` made on this thread, and its result.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (usize, T) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (LARGEST.with(Cell::get), out)
}

/// An image: the common magic, the image's own magic, one entry's size,
/// then `rest`.
fn image(magic_name: &str, size: u32, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&magic::IMG_COMMON.to_le_bytes());
    out.extend_from_slice(&magic::value_of(magic_name).unwrap().to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(rest);
    out
}

/// Far above what decoding a few dozen bytes needs (descriptor tables,
/// error text), far below the 4 GiB the hostile sizes ask for.
const BOUND: usize = 16 << 20;

#[test]
fn the_allocator_sees_a_large_allocation() {
    // The control: the measurement itself can fail.
    let (largest, v) = largest_allocation(|| Vec::<u8>::with_capacity(BOUND + 1));
    assert!(largest > BOUND, "{largest}");
    drop(v);
}

#[test]
fn a_huge_entry_size_is_refused_without_allocating_it() {
    let data = image("PSTREE", u32::MAX, b"abc");
    let (largest, r) = largest_allocation(|| Image::decode(&data));
    let err = r.unwrap_err();
    assert_eq!(err.offset, 12, "{err}");
    assert!(
        largest < BOUND,
        "decoding asked for {largest} bytes at once"
    );
}

#[test]
fn a_huge_payload_size_is_refused_without_allocating_it() {
    let entry = PipeDataEntry {
        pipe_id: 1,
        bytes: u32::MAX,
        size: None,
    }
    .encode_to_vec();
    let mut rest = entry.clone();
    rest.extend_from_slice(b"short");
    let data = image("PIPES_DATA", entry.len() as u32, &rest);
    let (largest, r) = largest_allocation(|| Image::decode(&data));
    assert!(r.unwrap_err().to_string().contains("truncated"));
    assert!(
        largest < BOUND,
        "decoding asked for {largest} bytes at once"
    );
}
