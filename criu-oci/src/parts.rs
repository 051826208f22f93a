//! A migration image's memory in part blobs, pushed while CRIU writes it.
//!
//! CRIU writes each `pages-<n>.img` front to back while it dumps, and
//! nothing else of a dump is large. A follower (`follow`) reads what has
//! been written, cuts it into parts of 32 MiB, and hands each, with
//! its digest, to be pushed as a blob of its own while the dump goes on;
//! the rest of the dump (every other file, as the usual checkpoint
//! archive without the parted pages images) goes up once the dump has
//! ended, as the image's first layer, the parts after it as layers of
//! media type [`PART_MEDIA_TYPE`] that name their file and offset.
//!
//! On the destination each part is downloaded whole into memory, checked
//! against its digest, and only then written into its file at its offset
//! (`Assembly`); parts must follow each other without gap or overlap.
//!
//! Such an image is criu-oci's own, for its migration routes: Podman,
//! CRI-O and checkpointctl expect the checkpoint archive as the only
//! layer, and would find no pages images in it. `criu-rs push` and
//! [`crate::Registry::push_checkpoint`] keep making one-layer images.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::image::sha256_digest;

/// The media type of a part layer: raw bytes of a pages image.
pub const PART_MEDIA_TYPE: &str = "application/vnd.criu-rs.checkpoint.pages-part.v1";

/// The annotation of a part layer naming the pages image it belongs to.
pub const PART_FILE: &str = "org.criu-rs.part.file";

/// The annotation of a part layer giving its offset in its file.
pub const PART_OFFSET: &str = "org.criu-rs.part.offset";

/// The size of a full part: large enough that the registry's cost per
/// blob (two requests, a file moved) stays small beside the bytes.
pub(crate) const PART: u64 = 32 << 20;

/// How long the follower waits when the dump wrote nothing new.
const POLL: Duration = Duration::from_millis(2);

/// One part of a pages image: where it belongs, and its blob. The
/// registry strategy's source announces each over the migration's stream
/// once its blob is in the registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Part {
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) digest: String,
    pub(crate) size: u64,
}

/// Whether `name` is one of CRIU's pages images (`pages-<n>.img`).
pub(crate) fn is_pages_image(name: &str) -> bool {
    name.strip_prefix("pages-")
        .and_then(|n| n.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Follows the pages images in `dir` while the dump writes them, handing
/// every full [`PART`] to `push` as soon as it is written, until `ended`
/// (set once the dump is over) and every byte went: then the files'
/// last, shorter parts. Returns the parts in the order pushed.
pub(crate) fn follow(
    dir: &Path,
    ended: &AtomicBool,
    mut push: impl FnMut(&Part, Bytes) -> Result<()>,
) -> Result<Vec<Part>> {
    let mut files: BTreeMap<String, (File, u64)> = BTreeMap::new();
    let mut parts = Vec::new();
    loop {
        // Read before looking: once it says ended, this look sees all.
        let last = ended.load(Ordering::Acquire);
        let mut moved = false;
        for name in pages_images(dir)? {
            if !files.contains_key(&name) {
                let f = File::open(dir.join(&name))
                    .map_err(|e| Error::io(format!("opening {name}"), e))?;
                files.insert(name.clone(), (f, 0));
            }
            let Some((f, offset)) = files.get_mut(&name) else {
                continue;
            };
            let len = f
                .metadata()
                .map_err(|e| Error::io(format!("reading {name}'s size"), e))?
                .len();
            while len - *offset >= PART || (last && len > *offset) {
                let size = PART.min(len - *offset);
                let mut data = vec![0; size as usize];
                f.read_exact_at(&mut data, *offset)
                    .map_err(|e| Error::io(format!("reading {name}"), e))?;
                let part = Part {
                    file: name.clone(),
                    offset: *offset,
                    digest: sha256_digest(&data),
                    size,
                };
                push(&part, Bytes::from(data))?;
                parts.push(part);
                *offset += size;
                moved = true;
            }
        }
        if last {
            return Ok(parts);
        }
        if !moved {
            std::thread::sleep(POLL);
        }
    }
}

/// The names of the pages images in `dir`, sorted.
pub(crate) fn pages_images(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_pages_image(n))
        .collect();
    names.sort();
    Ok(names)
}

/// The pages images being put together from verified parts, in the
/// checkpoint directory of an unpacked archive.
pub(crate) struct Assembly<'d> {
    dir: &'d Path,
    /// Each file's next offset.
    next: BTreeMap<String, u64>,
    /// Bytes written so far, against the unpacking's total limit.
    total: u64,
    limit: u64,
}

impl<'d> Assembly<'d> {
    /// Assembles into `dir`, at most `limit` bytes in all.
    pub(crate) fn new(dir: &'d Path, limit: u64) -> Assembly<'d> {
        Assembly {
            dir,
            next: BTreeMap::new(),
            total: 0,
            limit,
        }
    }

    /// Checks that `part` may come next (a pages image's name, the next
    /// offset of its file, within the limit) before its blob is fetched.
    pub(crate) fn check(&self, part: &Part) -> Result<()> {
        if !is_pages_image(&part.file) {
            return Err(Error::Malformed(format!(
                "a part layer names {:?}, not a pages image (pages-<n>.img)",
                part.file
            )));
        }
        let expected = self.next.get(&part.file).copied().unwrap_or(0);
        if part.offset != expected {
            return Err(Error::Malformed(format!(
                "a part of {} starts at {}, where {expected} was expected: parts must follow \
                 each other",
                part.file, part.offset
            )));
        }
        if expected == 0 && self.dir.join(&part.file).symlink_metadata().is_ok() {
            return Err(Error::Malformed(format!(
                "{} is both in the archive and in parts",
                part.file
            )));
        }
        if part.size == 0 || part.size > PART || self.total + part.size > self.limit {
            return Err(Error::TooLarge {
                what: format!("a part of {} ({} bytes)", part.file, part.size),
                limit: PART.min(self.limit - self.total),
            });
        }
        Ok(())
    }

    /// Checks `part` as [`Assembly::check`] does and counts it as if
    /// written: for checking a whole list before anything is fetched.
    pub(crate) fn plan(&mut self, part: &Part) -> Result<()> {
        self.check(part)?;
        self.next.insert(part.file.clone(), part.offset + part.size);
        self.total += part.size;
        Ok(())
    }

    /// Writes `data`, `part`'s blob already checked against its digest.
    pub(crate) fn write(&mut self, part: &Part, data: &[u8]) -> Result<()> {
        self.check(part)?;
        let path = self.dir.join(&part.file);
        let io = |e| Error::io(format!("writing {}", path.display()), e);
        // The first part creates the file, which must not exist (a link
        // of the archive's, say); the next ones append to it.
        let mut o = fs::OpenOptions::new();
        match part.offset {
            0 => o.write(true).create_new(true).mode(0o600),
            _ => o.append(true),
        };
        let mut f = o.open(&path).map_err(io)?;
        f.write_all(data).map_err(io)?;
        self.next.insert(part.file.clone(), part.offset + part.size);
        self.total += part.size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(file: &str, offset: u64, size: u64) -> Part {
        Part {
            file: file.into(),
            offset,
            digest: String::new(),
            size,
        }
    }

    #[test]
    fn parts_must_follow_each_other_into_pages_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembly::new(dir.path(), 10 << 20);
        a.write(&part("pages-1.img", 0, 3), b"abc").unwrap();
        a.write(&part("pages-1.img", 3, 2), b"de").unwrap();
        assert_eq!(fs::read(dir.path().join("pages-1.img")).unwrap(), b"abcde");
        // A gap, an overlap, a name that is not a pages image.
        for bad in [
            part("pages-1.img", 6, 1),
            part("pages-1.img", 4, 1),
            part("../x", 0, 1),
            part("pages-2.img.x", 0, 1),
            part("pages-.img", 0, 1),
        ] {
            assert!(matches!(a.check(&bad), Err(Error::Malformed(_))), "{bad:?}");
        }
        // Beyond the limit, or a file the archive brought.
        assert!(matches!(
            a.check(&part("pages-2.img", 0, 10 << 20)),
            Err(Error::TooLarge { .. })
        ));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("pages-3.img")).unwrap();
        assert!(a.check(&part("pages-3.img", 0, 1)).is_err());
        assert!(a.write(&part("pages-3.img", 0, 1), b"x").is_err());
        assert_eq!(
            fs::read_link(dir.path().join("pages-3.img")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn a_finished_pages_image_is_cut_into_parts() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..PART + 5).map(|i| i as u8).collect();
        fs::write(dir.path().join("pages-1.img"), &data).unwrap();
        fs::write(dir.path().join("core-1.img"), b"core").unwrap();
        let ended = AtomicBool::new(true);
        let mut got = Vec::new();
        let parts = follow(dir.path(), &ended, |p, bytes| {
            assert_eq!(p.digest, sha256_digest(&bytes));
            got.extend_from_slice(&bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[1].offset, parts[1].size), (PART, 5));
        assert_eq!(got, data);
    }
}
