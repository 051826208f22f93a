//! The private directory a transfer is received into before it is renamed
//! into place.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::transfer_err;
use crate::error::{Error, Result, TransferKind};

/// A directory of a random, unpredictable name beside the target, created
/// 0700 and held open: files are created through its descriptor, so
/// swapping the path for a link redirects nothing. Removed on drop unless
/// committed.
pub(super) struct Partial {
    dir: tempfile::TempDir,
    fd: OwnedFd,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Converts a libc return value to an owned descriptor or the OS error.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Partial {
    /// Creates the directory beside `target` (in its parent).
    pub(super) fn beside(target: &Path) -> Result<Partial> {
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = target.file_name().ok_or_else(|| {
            transfer_err(
                TransferKind::TargetExists,
                format!("{} has no file name", target.display()),
                None,
            )
        })?;
        let creating = |e| {
            Error::io(
                format!("creating a private directory in {}", parent.display()),
                e,
            )
        };
        // mkdir(0700) under a random name (tempfile's default mode is 0777
        // less the umask).
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{}.partial-", base.to_string_lossy()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(creating)?;
        let path = c_path(dir.path()).map_err(creating)?;
        // SAFETY: a valid C string; a plain open of a directory.
        let fd = owned(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
        .map_err(creating)?;
        Ok(Partial { dir, fd })
    }

    /// Creates file `name` (a single component) inside, failing if it
    /// exists and never following a link.
    pub(super) fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let c = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: an open directory descriptor and a valid C string.
        let fd = owned(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode) })?;
        Ok(File::from(fd))
    }

    /// Bytes an unprivileged writer may still use on its file system, and
    /// the file system's size.
    pub(super) fn space(&self) -> io::Result<(u64, u64)> {
        // SAFETY: an open descriptor and a zeroed out-struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let unit = st.f_frsize as u64;
        Ok((
            (st.f_bavail as u64).saturating_mul(unit),
            (st.f_blocks as u64).saturating_mul(unit),
        ))
    }

    /// Renames the directory to `target`, which must not exist (checked by
    /// the rename itself), and keeps it.
    pub(super) fn commit(self, target: &Path) -> Result<()> {
        let moving = |e| {
            Error::io(
                format!("moving the received files to {}", target.display()),
                e,
            )
        };
        let (from, to) = (
            c_path(self.dir.path()).map_err(moving)?,
            c_path(target).map_err(moving)?,
        );
        self.check_is(self.dir.path())?;
        // SAFETY: two valid C strings, paths relative to the cwd.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Err(transfer_err(
                    TransferKind::TargetExists,
                    format!("{} already exists", target.display()),
                    None,
                ));
            }
            return Err(moving(e));
        }
        if let Err(e) = self.check_is(target) {
            // Something else was moved there: put it back where it was.
            // SAFETY: as above.
            unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            return Err(e);
        }
        let _kept = self.dir.keep();
        Ok(())
    }

    /// Whether `path` is this very directory (not something swapped in for
    /// it while it was written).
    fn check_is(&self, path: &Path) -> Result<()> {
        let ours = File::from(
            self.fd
                .try_clone()
                .map_err(|e| Error::io("duplicating a descriptor", e))?,
        )
        .metadata()
        .map_err(|e| Error::io("reading the received directory's metadata", e))?;
        let there = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if (ours.dev(), ours.ino()) != (there.dev(), there.ino()) {
            return Err(transfer_err(
                TransferKind::TargetExists,
                format!(
                    "{} is not the directory that was received: it was replaced while the \
                     files were written, so they were not moved into place",
                    path.display()
                ),
                None,
            ));
        }
        Ok(())
    }
}
