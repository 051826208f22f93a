//! Image directories: where a checkpoint lives.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, InvalidKind, Result};
use crate::stats::Stats;

/// The file every complete checkpoint has.
const INVENTORY: &str = "inventory.img";

/// An images directory, held open by descriptor (CRIU is handed the
/// descriptor, so renaming the path afterwards does no harm).
#[derive(Debug)]
pub struct ImagesDir {
    path: PathBuf,
    fd: OwnedFd,
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // O_NOFOLLOW: an images directory given as a symlink is refused, so a
    // checkpoint cannot be redirected by swapping a link.
    // SAFETY: `c` is a valid C string; the flags make a plain open.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a file of a directory descriptor, not following symlinks.
pub(crate) fn read_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Vec<u8>> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    // SAFETY: `dir` is an open descriptor, `c` a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

pub(crate) fn exists_at(dir: BorrowedFd<'_>, name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `dir` is an open descriptor, `c` a valid C string.
    unsafe {
        libc::faccessat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::F_OK,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
    }
}

impl ImagesDir {
    /// Creates a fresh, private (0700) images directory for a dump. Fails if
    /// the path exists. The parent directory must exist.
    pub fn create(path: impl AsRef<Path>) -> Result<ImagesDir> {
        let path = path.as_ref();
        DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(format!("creating images directory {}", path.display()), e))?;
        Self::open(path)
    }

    /// Opens an existing images directory (to restore from it, or to dump
    /// into it with [`crate::Options::overwrite_images`]). Refuses paths
    /// that do not exist, are not directories, or are symbolic links.
    pub fn open(path: impl AsRef<Path>) -> Result<ImagesDir> {
        let path = path.as_ref();
        let meta = fs::symlink_metadata(path).map_err(|e| {
            let kind = if e.kind() == io::ErrorKind::NotFound {
                InvalidKind::NotFound
            } else {
                InvalidKind::Malformed
            };
            Error::invalid(
                None,
                kind,
                format!("images directory {}: {e}", path.display()),
            )
        })?;
        if meta.file_type().is_symlink() {
            return Err(Error::invalid(
                None,
                InvalidKind::Malformed,
                format!(
                    "images directory {} is a symbolic link; give the real path",
                    path.display()
                ),
            ));
        }
        if !meta.is_dir() {
            return Err(Error::invalid(
                None,
                InvalidKind::Malformed,
                format!("images directory {} is not a directory", path.display()),
            ));
        }
        let fd = open_dir(path)
            .map_err(|e| Error::io(format!("opening images directory {}", path.display()), e))?;
        Ok(ImagesDir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// The path the directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory holds a complete checkpoint (its inventory).
    pub fn holds_images(&self) -> bool {
        exists_at(self.fd.as_fd(), INVENTORY)
    }

    /// The relative path from this directory to `parent`, for
    /// [`crate::Options::parent_images`] in an incremental dump. Both must
    /// be siblings in one checkpoint root, so the link stays valid when the
    /// root is moved or copied.
    pub fn parent_link(&self, parent: &ImagesDir) -> Result<PathBuf> {
        let (a, b) = (self.path.parent(), parent.path.parent());
        let name = parent.path.file_name();
        match (a, b, name) {
            (Some(a), Some(b), Some(name)) if a == b && parent.path != self.path => {
                Ok(Path::new("..").join(name))
            }
            _ => Err(Error::invalid(
                None,
                InvalidKind::Malformed,
                format!(
                    "parent images {} are not a sibling of {} in one checkpoint root",
                    parent.path.display(),
                    self.path.display()
                ),
            )),
        }
    }

    /// Reads one file of the directory.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        read_at(self.fd.as_fd(), name)
            .map_err(|e| Error::io(format!("reading {} in {}", name, self.path.display()), e))
    }

    /// The pid of the checkpoint's root task, from `pstree.img` (the pid a
    /// restore gives it, unless it is the init of a PID namespace).
    pub fn root_pid(&self) -> Result<i32> {
        root_pid_of(&self.read("pstree.img")?)
    }

    /// Decodes `stats-dump`, if the directory (as work directory of a
    /// dump) has one.
    pub fn dump_stats(&self) -> Result<Option<Stats>> {
        self.stats("stats-dump")
    }

    /// Decodes `stats-restore`, if the directory has one.
    pub fn restore_stats(&self) -> Result<Option<Stats>> {
        self.stats("stats-restore")
    }

    fn stats(&self, name: &str) -> Result<Option<Stats>> {
        match read_at(self.fd.as_fd(), name) {
            Ok(bytes) => Stats::decode(name, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {name}"), e)),
        }
    }
}

impl AsFd for ImagesDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The first entry of a `pstree.img`: magic, pstree magic, then entries of
/// a u32 size and a `pstree_entry` message.
pub(crate) fn root_pid_of(bytes: &[u8]) -> Result<i32> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct PstreeEntry {
        #[prost(uint32, required, tag = "1")]
        pid: u32,
    }
    const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
    const PSTREE_MAGIC: u32 = 0x5027_3030;
    let bad = |message: &str| Error::BadImage {
        file: "pstree.img".into(),
        message: message.into(),
    };
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(PSTREE_MAGIC) {
        return Err(bad("not a pstree image (bad magic)"));
    }
    let size = word(8).ok_or_else(|| bad("no entry"))? as usize;
    let body = bytes
        .get(12..12usize.saturating_add(size))
        .ok_or_else(|| bad("truncated entry"))?;
    let entry = <PstreeEntry as prost::Message>::decode(body).map_err(|e| bad(&e.to_string()))?;
    i32::try_from(entry.pid).map_err(|_| bad("pid out of range"))
}
