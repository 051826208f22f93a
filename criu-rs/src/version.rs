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
    /// Soft-dirty memory tracking (`mem_dirty_track`): needed by pre-dumps,
    /// iterative dumps and `track_mem`.
    pub mem_track: bool,
    /// userfaultfd-based lazy pages (`uffd-noncoop`): post-copy migration.
    pub lazy_pages: bool,
    /// A pidfd store for pre-dumps (`pidfd_store`).
    pub pidfd_store: bool,
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
