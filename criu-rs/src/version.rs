//! CRIU versions and optional features.

use std::fmt;

/// A CRIU version, as libcriu encodes it (`major * 10000 + minor * 100 +
/// sublevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number (one higher for builds from a git checkout).
    pub minor: u32,
    /// Sublevel.
    pub sublevel: u32,
}

impl Version {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Version {
        Version {
            major,
            minor,
            sublevel,
        }
    }

    /// Decodes libcriu's integer form.
    pub fn from_encoded(v: u32) -> Version {
        Version::new(v / 10000, (v / 100) % 100, v % 100)
    }

    /// libcriu's integer form (saturating at `u32::MAX` for parts too
    /// large to encode).
    pub fn encoded(self) -> u32 {
        self.major
            .saturating_mul(10000)
            .saturating_add(self.minor.saturating_mul(100))
            .saturating_add(self.sublevel)
    }

    /// The version of the libcriu headers this crate was built against.
    pub fn of_headers() -> Version {
        Version::new(
            crate::sys::CRIU_VERSION_MAJOR,
            crate::sys::CRIU_VERSION_MINOR,
            crate::sys::CRIU_VERSION_SUBLEVEL,
        )
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

/// Optional features, as `criu check --feature` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Features {
    /// Memory change tracking (`mem_dirty_track`): needed by pre-dumps,
    /// iterative dumps and `track_mem`.
    pub mem_track: bool,
    /// How CRIU tracks memory changes when [`Features::mem_track`] is set
    /// (`None` otherwise).
    pub mem_track_method: Option<MemTrackMethod>,
    /// userfaultfd-based lazy pages (`uffd-noncoop`): post-copy migration.
    pub lazy_pages: bool,
    /// A pidfd store for pre-dumps (`pidfd_store`).
    pub pidfd_store: bool,
}

/// How pages written between two passes of a pre-copy are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum MemTrackMethod {
    /// The kernel's soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`), CRIU's own
    /// method.
    SoftDirty,
    /// A userfaultfd in asynchronous write-protect mode and the
    /// `PAGEMAP_SCAN` ioctl (Linux 6.7+), for kernels without soft-dirty:
    /// needs a CRIU built with the project's
    /// `patches/criu-uffd-wp-track.patch` (see `docs/precopy-uffd.md`).
    UffdWriteProtect,
}

impl fmt::Display for MemTrackMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemTrackMethod::SoftDirty => "soft-dirty bits",
            MemTrackMethod::UffdWriteProtect => "userfaultfd write-protection",
        })
    }
}

/// Whether this kernel keeps soft-dirty bits: a page this process has just
/// written reads as soft-dirty in its own pagemap (bit 55). Nothing is
/// cleared, so nobody's tracking is disturbed.
pub(crate) fn kernel_has_soft_dirty() -> bool {
    use std::os::unix::fs::FileExt;

    const SOFT_DIRTY: u64 = 1 << 55;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return false,
    };
    let mut buf = vec![0u8; 2 * page];
    let addr = buf.as_ptr() as usize;
    let aligned = addr.next_multiple_of(page);
    let off = aligned - addr;
    // The write makes the page present and (with soft-dirty) dirty.
    // SAFETY: off < page, so off is inside buf, which is live and ours.
    unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(off), 1) };
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut entry = [0u8; 8];
    let found = pagemap
        .read_exact_at(&mut entry, (aligned / page * 8) as u64)
        .is_ok();
    drop(buf);
    found && u64::from_ne_bytes(entry) & SOFT_DIRTY != 0
}

/// Whether this kernel offers userfaultfd with asynchronous
/// write-protection (`UFFD_FEATURE_WP_ASYNC`): what a CRIU built with the
/// project's patch tracks memory with where soft-dirty is missing.
pub(crate) fn kernel_has_uffd_wp_async() -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};

    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    const UFFD_API: u64 = 0xaa;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    // struct uffdio_api { __u64 api, features, ioctls; }; UFFDIO_API is
    // _IOWR(0xAA, 0x3f, struct uffdio_api).
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    let flags = UFFD_USER_MODE_ONLY | libc::O_CLOEXEC as libc::c_long;
    // SAFETY: userfaultfd takes flags only and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = [UFFD_API, 0, 0];
    // SAFETY: api has the layout of struct uffdio_api, live for the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            UFFDIO_API as _,
            api.as_mut_ptr(),
        )
    };
    rc == 0 && api[1] & UFFD_FEATURE_WP_ASYNC != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let v = Version::from_encoded(40201);
        assert_eq!(v, Version::new(4, 2, 1));
        assert_eq!(v.encoded(), 40201);
        assert_eq!(v.to_string(), "4.2.1");
        assert!(Version::new(4, 1, 0) < v);
        assert_eq!(Version::new(u32::MAX, 99, 99).encoded(), u32::MAX);
    }
}
