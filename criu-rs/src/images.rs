//! Image directories: where a checkpoint lives.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use criu_image::proto::PstreeEntry;

use crate::error::{Error, InvalidKind, Result};
use crate::framing::{self, bad};
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

/// The most the crate reads of an image it decodes itself (pstree,
/// pagemaps): real ones are kilobytes.
pub(crate) const MAX_IMAGE_READ: u64 = 64 << 20;
/// The most read of a statistics file (real ones are under 100 bytes).
pub(crate) const MAX_STATS_READ: u64 = 1 << 20;
/// How much of the end of a CRIU log is read for its error lines.
pub(crate) const MAX_LOG_TAIL: u64 = 8 << 20;

/// Opens a file of a directory descriptor for reading, refusing anything
/// but a regular file: no symlink is followed, and a FIFO is opened
/// without blocking (`O_NONBLOCK`) and then refused, so planting one
/// cannot hang the caller.
pub(crate) fn open_regular_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: `dir` is an open descriptor, `c` a valid C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    regular(file, name)
}

/// `file` if it is a regular file, an `InvalidData` error naming it if not.
fn regular(file: File, name: &str) -> io::Result<File> {
    if file.metadata()?.file_type().is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is not a regular file"),
        ))
    }
}

/// Reads a regular file of a directory descriptor whole (see
/// [`open_regular_at`]), refusing one larger than `max` bytes.
pub(crate) fn read_at(dir: BorrowedFd<'_>, name: &str, max: u64) -> io::Result<Vec<u8>> {
    let f = open_regular_at(dir, name)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is {len} bytes, more than the {max} expected"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last `max` bytes (at most) of a regular file of a directory.
pub(crate) fn read_tail_at(dir: BorrowedFd<'_>, name: &str, max: u64) -> io::Result<Vec<u8>> {
    tail(open_regular_at(dir, name)?, max)
}

/// The last `max` bytes (at most) of the regular file at `path` (not
/// followed if a symlink, refused if not a regular file).
pub(crate) fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    tail(regular(f, &path.display().to_string())?, max)
}

fn tail(mut f: File, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len > max {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The size of a regular file of a directory; `None` if it does not exist.
pub(crate) fn size_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<u64>> {
    match open_regular_at(dir, name) {
        Ok(f) => Ok(Some(f.metadata()?.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A fresh directory of this user's, mode 0700 whatever the umask (created
/// no wider than 0700, then set to exactly that): CRIU, as root, writes its
/// log and socket there, and nobody else may plant a symlink in it.
pub(crate) fn private_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o700);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(mode.clone())
        .tempdir()?;
    std::fs::set_permissions(dir.path(), mode)?;
    Ok(dir)
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

    /// Reads one regular file of the directory (a symlink, FIFO or device
    /// is refused rather than followed or waited on).
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        read_at(self.fd.as_fd(), name, u64::MAX)
            .map_err(|e| Error::io(format!("reading {} in {}", name, self.path.display()), e))
    }

    /// The pid of the checkpoint's root task, from `pstree.img` (the pid a
    /// restore gives it, unless it is the init of a PID namespace).
    pub fn root_pid(&self) -> Result<i32> {
        let bytes = read_at(self.fd.as_fd(), "pstree.img", MAX_IMAGE_READ)
            .map_err(|e| Error::io(format!("reading pstree.img in {}", self.path.display()), e))?;
        root_pid_of(&bytes)
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
        match read_at(self.fd.as_fd(), name, MAX_STATS_READ) {
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

/// The first entry of a `pstree.img`: the root task's pid.
pub(crate) fn root_pid_of(bytes: &[u8]) -> Result<i32> {
    let file = "pstree.img";
    let entry: PstreeEntry = framing::entries(file, bytes, "PSTREE")?.first()?;
    i32::try_from(entry.pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad(file, format!("root pid {} is out of range", entry.pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_in_place_of_an_image_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["stats-dump", "pstree.img"] {
            nix::unistd::mkfifo(&dir.path().join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let images = ImagesDir::open(dir.path()).unwrap();
        // Opening a FIFO for reading blocks until a writer comes: on
        // another thread, so that a regression fails instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let images = ImagesDir::open(path).unwrap();
            let _ = tx.send((images.dump_stats().is_err(), images.root_pid().is_err()));
        });
        let (stats_refused, pstree_refused) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO hung");
        assert!(stats_refused && pstree_refused);
        let e = images.read("stats-dump").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let tail = read_tail(&dir.path().join("pstree.img"), 10);
        assert!(tail.is_err());
    }
}
