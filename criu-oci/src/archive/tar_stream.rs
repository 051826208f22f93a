//! Reading a tar stream entry by entry, every byte of it counted: the
//! metadata entries (GNU long names and links, PAX headers) are read
//! into memory only up to a small cap and count against the archive's
//! entry and byte limits like any file; a file's content is never held,
//! the caller copies it out through [`TarStream::content`].
//!
//! The format (POSIX ustar, GNU and PAX extensions) is read here rather
//! than through the `tar` crate, whose iterator reads metadata entries
//! whole, whatever their size, before a caller can see them.

use std::io::{self, Read};

use super::Limits;
use crate::error::{Error, Result};

const BLOCK: usize = 512;
/// The longest GNU long name or long link taken: `PATH_MAX`.
pub(crate) const LONG_NAME_MAX: u64 = 4096;
/// The largest PAX extended header taken (a checkpoint's need a path,
/// a link target and a size: a few KiB at most).
pub(crate) const PAX_MAX: u64 = 64 << 10;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file (`0`, NUL, or `7`, contiguous).
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an entry before it.
    HardLink,
    /// Anything else (devices, fifos, sparse files...), by its type byte.
    Other(u8),
}

/// One entry's header, its extensions applied.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The path, as the archive names it.
    pub path: Vec<u8>,
    /// The link target (links only).
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Bytes of content that follow.
    pub size: u64,
}

impl Entry {
    /// The path for messages.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// A tar stream being read. Counts entries (metadata entries included)
/// against [`Limits::entries`] and metadata bytes against
/// [`Limits::total_bytes`]; the caller counts content.
pub(crate) struct TarStream<R> {
    inner: R,
    /// Content bytes of the current entry not read yet.
    left: u64,
    /// Padding after it.
    pad: u64,
    /// Entries seen, metadata entries included.
    pub entries: usize,
    /// Bytes of metadata entries read.
    pub meta_bytes: u64,
    limits: Limits,
}

/// Extensions gathered for the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none()
            && self.long_link.is_none()
            && self.pax_path.is_none()
            && self.pax_link.is_none()
            && self.pax_size.is_none()
    }
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

fn read_err(e: io::Error) -> Error {
    Error::io("reading the archive", e)
}

impl<R: Read> TarStream<R> {
    pub(crate) fn new(inner: R, limits: &Limits) -> TarStream<R> {
        TarStream {
            inner,
            left: 0,
            pad: 0,
            entries: 0,
            meta_bytes: 0,
            limits: *limits,
        }
    }

    /// The next entry, or `None` at the end of the archive. What the
    /// caller left unread of the previous entry's content is skipped.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let Some(block) = self.read_block()? else {
                return if pending.is_empty() {
                    Ok(None)
                } else {
                    Err(malformed("the archive ends after an extension header"))
                };
            };
            if block.iter().all(|b| *b == 0) {
                // The end-of-archive marker (what follows is padding).
                return if pending.is_empty() {
                    Ok(None)
                } else {
                    Err(malformed("the archive ends after an extension header"))
                };
            }
            check_sum(&block)?;
            self.entries += 1;
            if self.entries > self.limits.entries {
                return Err(Error::TooLarge {
                    what: "the number of archive entries (metadata entries included)".into(),
                    limit: self.limits.entries as u64,
                });
            }
            let size = parse_size(&block[124..136])?;
            match block[156] {
                b'L' => {
                    pending.long_name =
                        Some(self.read_meta(size, LONG_NAME_MAX, "a GNU long name")?)
                }
                b'K' => {
                    pending.long_link =
                        Some(self.read_meta(size, LONG_NAME_MAX, "a GNU long link")?)
                }
                b'x' => {
                    let data = self.read_meta(size, PAX_MAX, "a PAX extended header")?;
                    parse_pax(&data, &mut pending)?;
                }
                // Global PAX headers say nothing a checkpoint needs.
                b'g' => drop(self.read_meta(size, PAX_MAX, "a PAX global header")?),
                t => return Ok(Some(self.entry(&block, t, size, pending))),
            }
        }
    }

    fn entry(&mut self, block: &[u8; BLOCK], t: u8, size: u64, p: Pending) -> Entry {
        let kind = match t {
            b'0' | 0 | b'7' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::HardLink,
            other => Kind::Other(other),
        };
        let size = p.pax_size.unwrap_or(size);
        let path = p
            .pax_path
            .or(p.long_name)
            .unwrap_or_else(|| ustar_path(block));
        let link = p
            .pax_link
            .or(p.long_link)
            .unwrap_or_else(|| field(&block[157..257]).to_vec());
        // Links and directories carry no content in a tar written by any
        // tool; if one says otherwise, it is skipped, not taken.
        self.left = size;
        self.pad = padding(size);
        Entry {
            path: trim_nul(path),
            link: trim_nul(link),
            kind,
            size,
        }
    }

    /// The current entry's content: exactly its size, or an error if the
    /// archive ends before.
    pub(crate) fn content(&mut self) -> Content<'_, R> {
        Content { stream: self }
    }

    /// Reads a metadata entry's content into memory, refusing it before a
    /// byte is read if it is larger than `cap` or than what is left of
    /// the total.
    fn read_meta(&mut self, size: u64, cap: u64, what: &str) -> Result<Vec<u8>> {
        if size > cap {
            return Err(Error::TooLarge {
                what: format!("{what} in the archive"),
                limit: cap,
            });
        }
        self.meta_bytes += size;
        if self.meta_bytes > self.limits.total_bytes {
            return Err(Error::TooLarge {
                what: "the archive's content (metadata entries included)".into(),
                limit: self.limits.total_bytes,
            });
        }
        let mut data = vec![0; size as usize];
        self.inner.read_exact(&mut data).map_err(read_err)?;
        self.skip(padding(size))?;
        Ok(data)
    }

    fn skip_rest(&mut self) -> Result<()> {
        let n = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.skip(n)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(read_err)?;
        if copied < n {
            return Err(malformed("the archive ends inside an entry"));
        }
        Ok(())
    }

    /// A header block, or `None` at a clean end of input.
    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(malformed("the archive ends inside a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        Ok(Some(block))
    }
}

/// [`TarStream::content`].
pub(crate) struct Content<'a, R> {
    stream: &'a mut TarStream<R>,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.stream;
        if s.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(s.left).unwrap_or(usize::MAX));
        let n = s.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            ));
        }
        s.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated (or full-width) header field.
fn field(f: &[u8]) -> &[u8] {
    f.iter().position(|b| *b == 0).map_or(f, |end| &f[..end])
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|b| *b == 0) {
        v.truncate(end);
    }
    v
}

/// The name field, with the ustar prefix in front when the header is
/// POSIX ustar (GNU headers use those bytes for other things).
fn ustar_path(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = field(&block[0..100]);
    let posix = &block[257..263] == b"ustar\0";
    let prefix = if posix { field(&block[345..500]) } else { &[] };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// The header checksum: the sum of its bytes, the checksum field counted
/// as spaces.
fn check_sum(block: &[u8; BLOCK]) -> Result<()> {
    let stated = parse_octal(&block[148..156])
        .ok_or_else(|| malformed("a tar header's checksum field is not a number"))?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stated {
        return Err(malformed(
            "a tar header's checksum does not match (damaged, or not a tar stream)",
        ));
    }
    Ok(())
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let digits = field(f);
    let digits = std::str::from_utf8(digits).ok()?.trim_matches(|c| c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// A size field: octal, or GNU's base-256 (high bit set) for large files.
fn parse_size(f: &[u8]) -> Result<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return Err(malformed("a tar header states a negative size"));
        }
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or_else(|| malformed("a tar header's size overflows"))?;
        }
        return Ok(v);
    }
    parse_octal(f).ok_or_else(|| malformed("a tar header's size is not a number"))
}

/// PAX records, `<len> <key>=<value>\n` each: `path`, `linkpath` and
/// `size` are taken, the others ignored.
fn parse_pax(mut data: &[u8], p: &mut Pending) -> Result<()> {
    let bad = || malformed("a PAX extended header is malformed");
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => p.pax_path = Some(value.to_vec()),
            b"linkpath" => p.pax_link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?;
                p.pax_size = Some(size);
            }
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_octal_and_base256() {
        assert_eq!(parse_size(b"00000001750\0").unwrap(), 1000);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x02; // 2 << 32
        assert_eq!(parse_size(&big).unwrap(), 2 << 32);
        big[0] = 0xff;
        assert!(parse_size(&big).is_err());
    }

    #[test]
    fn pax_records() {
        let mut p = Pending::default();
        parse_pax(b"12 path=a/b\n11 size=42\n19 mtime=1.5 extra\n", &mut p).unwrap();
        assert_eq!(p.pax_path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(p.pax_size, Some(42));
        for bad in [
            &b"99 path=a\n"[..],
            b"5 path=a\n",
            b"x path\n",
            b"12 size=zz\n",
        ] {
            assert!(parse_pax(bad, &mut Pending::default()).is_err(), "{bad:?}");
        }
    }
}
