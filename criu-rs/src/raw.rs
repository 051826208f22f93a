//! The one owner of libcriu's `criu_opts` handle, and the one return-code
//! helper every libcriu setter goes through.

use std::ffi::{c_int, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};

use nix::errno::Errno;

use crate::error::{Error, InvalidKind, Result};
use crate::sys;

/// An initialised `criu_opts`, freed on drop.
///
/// Deliberately neither `Send` nor `Sync` (the raw pointer sees to that): a
/// handle is made, filled and used by one call on one thread, and libcriu
/// keeps callbacks and fds in it that belong to that call.
pub(crate) struct RawOpts(NonNull<sys::criu_opts>);

impl RawOpts {
    pub(crate) fn new() -> Result<RawOpts> {
        // criu_local_init_opts frees whatever *p points to: start from NULL.
        let mut p: *mut sys::criu_opts = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer that holds NULL.
        let rc = unsafe { sys::criu_local_init_opts(&mut p) };
        cvt(rc, "criu_local_init_opts")?;
        NonNull::new(p).map(RawOpts).ok_or_else(|| {
            Error::io(
                "criu_local_init_opts",
                std::io::ErrorKind::OutOfMemory.into(),
            )
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::criu_opts {
        self.0.as_ptr()
    }
}

impl Drop for RawOpts {
    fn drop(&mut self) {
        // SAFETY: the pointer came from criu_local_init_opts and is freed once.
        unsafe { sys::criu_local_free_opts(self.0.as_ptr()) }
    }
}

/// Turns a negative libcriu setter return into an error naming the setter.
pub(crate) fn cvt(rc: c_int, what: &str) -> Result<c_int> {
    if rc < 0 {
        // Setters return -1 (errno-less) or -ENOMEM; name both.
        let err = if rc == -1 {
            std::io::Error::other("libcriu rejected the value")
        } else {
            std::io::Error::from(Errno::from_raw(-rc))
        };
        Err(Error::io(what, err))
    } else {
        Ok(rc)
    }
}

/// A C string from Rust text, rejecting interior NULs.
pub(crate) fn c_string(value: &str, what: &str) -> Result<CString> {
    CString::new(value).map_err(|_| {
        Error::invalid(
            None,
            InvalidKind::Malformed,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A C string from a path, rejecting interior NULs.
pub(crate) fn c_path(path: &Path, what: &str) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::invalid(
            None,
            InvalidKind::Malformed,
            format!("{what} {} contains a NUL byte", path.display()),
        )
    })
}
