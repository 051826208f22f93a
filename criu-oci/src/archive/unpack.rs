//! Unpacking an archive into a directory it cannot leave, whatever its
//! entries say.
//!
//! * Every path is taken apart textually (no absolute path, no `..`
//!   above the target) and walked from the target's descriptor one
//!   component at a time with `O_NOFOLLOW`: nothing is ever written
//!   through a symbolic link, whatever the order of the entries.
//! * Files are created with `O_EXCL | O_NOFOLLOW`: no entry writes
//!   through, or over, what an entry before it made.
//! * A symbolic link is created, never followed, if its target stays in
//!   the tree read as text; once everything is unpacked, each one is
//!   resolved by the kernel (`openat2` with `RESOLVE_BENEATH`), which
//!   refuses a chain (`up -> .`, `l1 -> up/..`) that climbs out.
//! * A hard link must name a regular file this unpacking wrote.
//! * Sizes are checked from the header, before a byte of the entry is
//!   written; metadata entries count against the same limits
//!   (see [`super::tar_stream`]).

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, DirBuilder, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tar_stream::{Entry, Kind, TarStream};
use super::{CHECKPOINT_DIR, CONFIG_DUMP};
use crate::error::{Error, Result};

/// How much an archive may unpack to, and how much a pull may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// All files together, uncompressed, metadata entries included.
    pub total_bytes: u64,
    /// One file.
    pub entry_bytes: u64,
    /// Number of entries, metadata entries (long names, PAX headers)
    /// included.
    pub entries: usize,
    /// The layer as downloaded (compressed or not): a manifest announcing
    /// a larger one is refused before a byte of it is fetched.
    pub layer_bytes: u64,
    /// How long a whole pull (manifest, config, layer, unpacking) may
    /// take before it is abandoned.
    pub deadline: Duration,
}

impl Default for Limits {
    /// 64 GiB in all, per file and per layer, 100 000 entries, one hour:
    /// far above any checkpoint these machines make, far below a
    /// decompression bomb's aim.
    fn default() -> Limits {
        Limits {
            total_bytes: 64 << 30,
            entry_bytes: 64 << 30,
            entries: 100_000,
            layer_bytes: 64 << 30,
            deadline: Duration::from_secs(3600),
        }
    }
}

/// An unpacked archive.
#[derive(Debug)]
pub struct Unpacked {
    /// The directory it was unpacked into.
    pub root: PathBuf,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries read, metadata entries included.
    pub entries: usize,
}

impl Unpacked {
    /// CRIU's images (`checkpoint/`), to restore from.
    pub fn images(&self) -> Result<criu::ImagesDir> {
        Ok(criu::ImagesDir::open(self.root.join(CHECKPOINT_DIR))?)
    }

    /// A fresh, private (0700) directory for CRIU's log and statistics on
    /// restore (`Options::work_dir`), beside the unpacked tree, never in
    /// it: `<root>.criu-work`, which must not exist. Without it CRIU
    /// writes its log into the images directory, where a file of the
    /// archive's choosing may already sit under that name.
    pub fn criu_work_dir(&self) -> Result<criu::ImagesDir> {
        let mut path = self.root.clone().into_os_string();
        path.push(".criu-work");
        Ok(criu::ImagesDir::create(PathBuf::from(path))?)
    }

    /// The engine's `config.dump`, parsed (at most 16 MiB read).
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let text = read_capped(&self.root.join(CONFIG_DUMP), 16 << 20)?;
        serde_json::from_slice(&text).map_err(|e| Error::Malformed(format!("config.dump: {e}")))
    }
}

/// Reads a file of the unpacked tree, refusing one larger than `cap`.
pub(crate) fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let f = fs::File::open(path).map_err(io)?;
    let mut data = Vec::new();
    f.take(cap + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() as u64 > cap {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            limit: cap,
        });
    }
    Ok(data)
}

/// Unpacks an archive (plain, gzip or zstd, told by its first bytes) into
/// `target`, a directory this call creates (0700) and removes again if
/// anything fails. Refuses, before writing that entry: paths that leave
/// `target` (absolute, `..`, through a symbolic link), symbolic links that
/// lead outside it (alone or in a chain, checked by the kernel), hard
/// links to anything but a file unpacked before, devices, fifos and
/// sparse files, metadata entries beyond a few KiB, and sizes beyond
/// `limits`.
pub fn unpack(input: impl Read, target: &Path, limits: &Limits) -> Result<Unpacked> {
    DirBuilder::new()
        .mode(0o700)
        .create(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let r = unpack_into(input, target, limits);
    if r.is_err() {
        let _ = fs::remove_dir_all(target);
    }
    r
}

/// The tar stream of `input`, plain, gzip or zstd, told by its first bytes.
pub(crate) fn decompressed<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut input = BufReader::new(input);
    let head = input
        .fill_buf()
        .map_err(|e| Error::io("reading the archive", e))?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(input)),
        // Podman's default export.
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| Error::Malformed(format!("zstd stream: {e}")))?,
        ),
        _ => Box::new(input),
    })
}

fn unpack_into(input: impl Read, target: &Path, limits: &Limits) -> Result<Unpacked> {
    let mut tar = TarStream::new(decompressed(input)?, limits);
    let mut tree = Tree::open(target)?;
    let mut bytes = 0;
    while let Some(entry) = tar.next_entry()? {
        let room = limits
            .total_bytes
            .saturating_sub(bytes + tar.meta_bytes)
            .min(limits.entry_bytes);
        if entry.size > room {
            let (what, limit) = if room == limits.entry_bytes {
                (
                    format!("archive entry {}", entry.name()),
                    limits.entry_bytes,
                )
            } else {
                ("the archive's content".to_string(), limits.total_bytes)
            };
            return Err(Error::TooLarge { what, limit });
        }
        bytes += tree.add(&entry, &mut tar.content())?;
    }
    tree.check_symlinks()?;
    Ok(Unpacked {
        root: target.to_path_buf(),
        bytes,
        entries: tar.entries,
    })
}

/// The tree being unpacked: its root's descriptor, the regular files
/// written (what a hard link may name), the symbolic links made.
struct Tree {
    root: OwnedFd,
    files: HashSet<Vec<OsString>>,
    symlinks: Vec<Vec<OsString>>,
}

fn unsafe_entry(entry: &Entry, reason: &str) -> Error {
    Error::UnsafeEntry {
        entry: entry.name(),
        reason: reason.into(),
    }
}

fn entry_io_error(entry: &Entry, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => {
            unsafe_entry(entry, "its path goes through a symbolic link or a file")
        }
        Some(libc::EEXIST) => unsafe_entry(entry, "an entry before it already took its path"),
        _ => Error::io(format!("unpacking {}", entry.name()), e),
    }
}

impl Tree {
    fn open(target: &Path) -> Result<Tree> {
        let root = open_at(
            None,
            target.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| Error::io(format!("opening {}", target.display()), e))?;
        Ok(Tree {
            root,
            files: HashSet::new(),
            symlinks: Vec::new(),
        })
    }

    /// Adds one entry; returns the bytes of content written.
    fn add(&mut self, entry: &Entry, content: &mut impl Read) -> Result<u64> {
        let Some(parts) = components(&entry.path) else {
            return Err(unsafe_entry(
                entry,
                "its path is absolute or climbs out with `..`",
            ));
        };
        let Some((name, dirs)) = parts.split_last() else {
            // `./` and the like: the target itself.
            return match entry.kind {
                Kind::Dir => Ok(0),
                _ => Err(unsafe_entry(entry, "it names the archive's root")),
            };
        };
        let io = |e: io::Error| entry_io_error(entry, e);
        match entry.kind {
            Kind::Dir => self.walk(&parts, true).map(drop).map_err(io)?,
            Kind::File => {
                let parent = self.walk(dirs, true).map_err(io)?;
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let mut f = File::from(open_at(Some(&parent), name, flags, 0o600).map_err(io)?);
                let n = io::copy(content, &mut f).map_err(io)?;
                self.files.insert(parts.clone());
                return Ok(n);
            }
            Kind::Symlink => {
                let link = Path::new(OsStr::from_bytes(&entry.link));
                // The target as seen from the link's directory.
                let mut resolved: Vec<u8> = Vec::new();
                for d in dirs {
                    resolved.extend_from_slice(d.as_bytes());
                    resolved.push(b'/');
                }
                resolved.extend_from_slice(&entry.link);
                if entry.link.is_empty() || link.is_absolute() || components(&resolved).is_none() {
                    return Err(unsafe_entry(
                        entry,
                        "it is a symbolic link that points outside the archive",
                    ));
                }
                let parent = self.walk(dirs, true).map_err(io)?;
                symlink_at(&entry.link, &parent, name).map_err(io)?;
                self.symlinks.push(parts);
            }
            Kind::HardLink => {
                let src = components(&entry.link).filter(|s| self.files.contains(s));
                let Some((src_name, src_dirs)) = src.as_deref().and_then(|s| s.split_last()) else {
                    return Err(unsafe_entry(
                        entry,
                        "it is a hard link to something other than a file unpacked before it",
                    ));
                };
                let src_parent = self.walk(src_dirs, false).map_err(io)?;
                let parent = self.walk(dirs, true).map_err(io)?;
                link_at(&src_parent, src_name, &parent, name).map_err(io)?;
                self.files.insert(parts);
            }
            Kind::Other(t) => {
                return Err(unsafe_entry(
                    entry,
                    &format!(
                    "its type {:?} (device, fifo, sparse file...) never belongs to a checkpoint",
                    char::from(t)
                ),
                ))
            }
        }
        Ok(0)
    }

    /// Opens (creating if asked) the directory `dirs` under the root, one
    /// component at a time, following no link.
    fn walk(&self, dirs: &[OsString], create: bool) -> io::Result<OwnedFd> {
        let mut cur = open_at(
            Some(&self.root),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        for d in dirs {
            if create {
                match mkdir_at(&cur, d) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    r => r?,
                }
            }
            cur = open_at(Some(&cur), d, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        }
        Ok(cur)
    }

    /// Resolves every symbolic link made, now that the tree is complete,
    /// with the kernel refusing any step out of the root. A link whose
    /// target does not exist is left (it cannot lead anywhere: nothing
    /// more is unpacked).
    fn check_symlinks(&self) -> Result<()> {
        for parts in &self.symlinks {
            let path = PathBuf::from(parts.join(OsStr::new("/")));
            let refuse = |reason: &str| Error::UnsafeEntry {
                entry: path.display().to_string(),
                reason: reason.into(),
            };
            match open_beneath(&self.root, &path) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ENOTDIR) => {}
                    Some(libc::EXDEV) => {
                        return Err(refuse(
                            "it is a symbolic link that leads outside the archive (through other links)",
                        ))
                    }
                    Some(libc::ELOOP) => return Err(refuse("its symbolic links form a loop")),
                    Some(libc::ENOSYS) => {
                        return Err(refuse(
                            "it is a symbolic link, and this kernel lacks openat2 (Linux 5.6) to check where it leads",
                        ))
                    }
                    _ => return Err(Error::io(format!("checking the link {}", path.display()), e)),
                },
            }
        }
        Ok(())
    }
}

/// The normal components of a relative path, `.` dropped and `..`
/// applied textually; `None` if it is absolute or climbs above its start.
fn components(path: &[u8]) -> Option<Vec<OsString>> {
    if path.first() == Some(&b'/') {
        return None;
    }
    let mut out: Vec<OsString> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Some(out)
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat` (or `open` without a directory) with `O_NOFOLLOW | O_CLOEXEC`.
fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid C string and descriptor; the result is checked.
    let r = unsafe {
        libc::openat(
            fd,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn mkdir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a valid C string and descriptor.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn symlink_at(target: &[u8], dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (cstr(OsStr::from_bytes(target))?, cstr(name)?);
    // SAFETY: valid C strings and descriptor.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: a link is never followed.
fn link_at(src_dir: &OwnedFd, src: &OsStr, dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let (s, n) = (cstr(src)?, cstr(name)?);
    // SAFETY: valid C strings and descriptors.
    let r = unsafe {
        libc::linkat(
            src_dir.as_raw_fd(),
            s.as_ptr(),
            dir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `path` under `root` (`O_PATH`), following links but letting the
/// kernel refuse any step that leaves `root` (`RESOLVE_BENEATH`).
fn open_beneath(root: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `open_how` is plain integers; all zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: a valid descriptor, C string and `open_how` of the size given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_fd().as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a descriptor just opened, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a rename raced the resolution of `..`; ask again.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &str) -> Option<Vec<String>> {
        components(p.as_bytes()).map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn components_are_confined() {
        assert_eq!(parts("./a/b"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(parts("a/../b"), Some(vec!["b".into()]));
        assert_eq!(parts("a/../../b"), None);
        assert_eq!(parts("/etc"), None);
        assert_eq!(parts(".."), None);
        assert_eq!(parts("./"), Some(vec![]));
    }
}
