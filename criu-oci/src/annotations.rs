//! The `org.criu.checkpoint.*` annotations that Podman, CRI-O, containerd
//! and checkpointctl put on checkpoint images, the host facts they record,
//! and the check that a checkpoint can be restored on this host.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Marks an image as a checkpoint: the checkpointed container's name.
pub const CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
/// The engine that made the checkpoint.
pub const ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
/// The engine's version.
pub const ENGINE_VERSION: &str = "org.criu.checkpoint.engine.version";
/// CRIU's version, in libcriu's integer form (`40201` for 4.2.1).
pub const CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
/// The CPU architecture, in Go's names (`amd64`, `arm64`...), as the engines write it.
pub const HOST_ARCH: &str = "org.criu.checkpoint.host.arch";
/// The kernel release (`uname -r`).
pub const HOST_KERNEL: &str = "org.criu.checkpoint.host.kernel";
/// `v1` or `v2`.
pub const CGROUP_VERSION: &str = "org.criu.checkpoint.cgroup.version";
/// The image the container's root file system came from.
pub const ROOTFS_IMAGE_NAME: &str = "org.criu.checkpoint.rootfsImageName";
/// The host distribution's name (`ID` of os-release).
pub const DISTRIBUTION_NAME: &str = "org.criu.checkpoint.distribution.name";
/// The host distribution's version (`VERSION_ID` of os-release).
pub const DISTRIBUTION_VERSION: &str = "org.criu.checkpoint.distribution.version";

/// The facts about a host that decide whether a checkpoint restores on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Go's name of the CPU architecture.
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    /// `v1` or `v2` (whether `/sys/fs/cgroup` is a cgroup2 mount).
    pub cgroup_version: String,
    /// CRIU's version as its service reports it.
    pub criu_version: criu::Version,
    /// os-release's `ID` and `VERSION_ID`.
    pub distribution: (String, String),
}

impl HostFacts {
    /// This host's facts; asks `criu` for its version.
    pub fn current(criu: &criu::Criu) -> Result<HostFacts> {
        Ok(HostFacts {
            arch: go_arch(std::env::consts::ARCH).to_string(),
            kernel: kernel_release(),
            cgroup_version: cgroup_version().to_string(),
            criu_version: criu.version()?,
            distribution: distribution(),
        })
    }

    /// The host annotations of a checkpoint made here.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert(HOST_ARCH.into(), self.arch.clone());
        a.insert(HOST_KERNEL.into(), self.kernel.clone());
        a.insert(CGROUP_VERSION.into(), self.cgroup_version.clone());
        a.insert(CRIU_VERSION.into(), self.criu_version.encoded().to_string());
        a.insert(DISTRIBUTION_NAME.into(), self.distribution.0.clone());
        a.insert(DISTRIBUTION_VERSION.into(), self.distribution.1.clone());
        a
    }

    /// Checks that a checkpoint with `annotations` can be restored here:
    /// it must be a checkpoint, made on the same CPU architecture, by the
    /// same CRIU version (CRIU's images carry no compatibility promise
    /// across versions, and a newer CRIU's images may not be readable).
    pub fn check(&self, reference: &str, annotations: &BTreeMap<String, String>) -> Result<()> {
        if !annotations.contains_key(CONTAINER_NAME) {
            return Err(Error::NotACheckpoint {
                reference: reference.into(),
            });
        }
        let incompatible = |reason: String| Error::Incompatible {
            reference: reference.into(),
            reason,
        };
        match annotations.get(HOST_ARCH) {
            Some(a) if *a == self.arch => {}
            Some(a) => {
                return Err(incompatible(format!(
                    "it was made on {a}, this host is {} (CRIU restores only on the CPU architecture it dumped)",
                    self.arch
                )))
            }
            None => return Err(incompatible(format!("it does not say its CPU architecture ({HOST_ARCH})"))),
        }
        let theirs = annotations
            .get(CRIU_VERSION)
            .and_then(|v| v.parse::<u32>().ok())
            .map(criu::Version::from_encoded)
            .ok_or_else(|| {
                incompatible(format!(
                    "it does not say which CRIU made it ({CRIU_VERSION})"
                ))
            })?;
        if theirs != self.criu_version {
            return Err(incompatible(format!(
                "it was made by CRIU {theirs}, this host has CRIU {}; restore it with the same CRIU version",
                self.criu_version
            )));
        }
        Ok(())
    }
}

/// Go's `GOARCH` name for Rust's `ARCH`, since the engines write those.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "arm" => "arm",
        other => other,
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cgroup_version() -> &'static str {
    // SAFETY: a zeroed statfs is a valid out-parameter; the path is a C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the duration of the call.
    let ok = unsafe { libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) } == 0;
    if ok && st.f_type == libc::CGROUP2_SUPER_MAGIC {
        "v2"
    } else {
        "v1"
    }
}

fn distribution() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (field("ID"), field("VERSION_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> HostFacts {
        HostFacts {
            arch: "amd64".into(),
            kernel: "6.1.0".into(),
            cgroup_version: "v2".into(),
            criu_version: criu::Version::new(4, 2, 1),
            distribution: ("debian".into(), "12".into()),
        }
    }

    #[test]
    fn own_annotations_pass_and_each_difference_is_named() {
        let h = here();
        let mut a = h.annotations();
        a.insert(CONTAINER_NAME.into(), "c".into());
        assert_eq!(a[CRIU_VERSION], "40201");
        h.check("r", &a).unwrap();
        // Kernel, cgroup and distribution may differ: CRIU copes.
        a.insert(HOST_KERNEL.into(), "5.10".into());
        h.check("r", &a).unwrap();
        let mut arch = a.clone();
        arch.insert(HOST_ARCH.into(), "arm64".into());
        let e = h.check("r", &arch).unwrap_err().to_string();
        assert!(e.contains("arm64") && e.contains("amd64"), "{e}");
        let mut newer = a.clone();
        newer.insert(CRIU_VERSION.into(), "40300".into());
        let e = h.check("r", &newer).unwrap_err().to_string();
        assert!(e.contains("CRIU 4.3.0") && e.contains("4.2.1"), "{e}");
        let mut unsaid = a.clone();
        unsaid.remove(CRIU_VERSION);
        assert!(matches!(
            h.check("r", &unsaid),
            Err(Error::Incompatible { .. })
        ));
        a.remove(CONTAINER_NAME);
        assert!(matches!(
            h.check("r", &a),
            Err(Error::NotACheckpoint { .. })
        ));
    }

    #[test]
    fn go_names_for_rust_arches() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("s390x"), "s390x");
    }
}
