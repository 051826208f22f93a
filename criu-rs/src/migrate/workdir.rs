//! Where a migration's images live: a directory the caller chose, or one
//! of the crate's own in memory (a private directory on a tmpfs, removed
//! when the migration ends), which keeps the disk out of the path.

use std::path::{Path, PathBuf};

use crate::error::{Error, InvalidKind, Result};

/// The memory-backed file system the crate's own directories go on.
const MEMORY_ROOT: &str = "/dev/shm";
/// `statfs`'s `f_type` of a tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where one side keeps its images.
pub(super) enum WorkDir {
    /// The caller's directory (it must exist); the images go in `images`.
    Chosen(PathBuf),
    /// A private directory of the crate's on a tmpfs.
    InMemory,
}

/// The work directory of one migration, held while it runs: the crate's
/// own is removed on drop, the caller's stays.
pub(super) struct Held {
    path: PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl Held {
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl WorkDir {
    /// The directory to use for one migration.
    pub(super) fn hold(&self) -> Result<Held> {
        match self {
            WorkDir::Chosen(p) => Ok(Held {
                path: p.clone(),
                _owned: None,
            }),
            WorkDir::InMemory => in_memory(Path::new(MEMORY_ROOT)),
        }
    }
}

/// A private (0700) directory of a random name in `root`, which must be a
/// tmpfs.
fn in_memory(root: &Path) -> Result<Held> {
    if !is_tmpfs(root) {
        return Err(Error::invalid(
            None,
            InvalidKind::Missing,
            format!(
                "{} is not a tmpfs, so the images cannot be kept in memory: choose a directory \
                 (SourceConfig::work_dir / DestConfig::work_dir)",
                root.display()
            ),
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("criu-rs-migrate-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(root)
        .map_err(|e| {
            Error::io(
                format!("creating a private directory in {}", root.display()),
                e,
            )
        })?;
    Ok(Held {
        path: dir.path().to_path_buf(),
        _owned: Some(dir),
    })
}

fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC }
}
