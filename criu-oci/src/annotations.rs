//! The annotations the container engines put on checkpoint images, the
//! host facts they record, and the check that a checkpoint can be
//! restored on this host.
//!
//! What each engine writes (read in their sources):
//!
//! * `org.criu.checkpoint.*`: checkpointctl's metadata library, used by
//!   `checkpointctl build` and by recent CRI-O and containerd, and by
//!   this crate (container name, engine, CRIU version, host arch,
//!   kernel, cgroup version, distribution...).
//! * `io.podman.annotations.checkpoint.*`: Podman's
//!   `container checkpoint --create-image` (`name`, `criu.version`,
//!   `host.arch`, `host.kernel`, `cgroups.version`, `podman.version`,
//!   `runtime.name`...).
//! * `io.kubernetes.cri-o.annotations.checkpoint.*` and
//!   `io.kubernetes.containerd.annotations.checkpoint.*`: older CRI-O and
//!   containerd (`name`, `criu.version`, `rootfsImageName`...), and the
//!   `buildah` recipe Kubernetes' documentation gives, which sets only
//!   the `name` one.
//!
//! An image is a checkpoint if it carries any set's container name. The
//! CPU architecture comes from an annotation, else from the image
//! config's `architecture`; a CRIU version, when stated, must be this
//! host's, and when not, CRIU checks its images itself on restore.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// One engine's annotation keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySet {
    /// Who writes this set.
    pub writer: &'static str,
    /// The checkpointed container's name (what marks a checkpoint).
    pub name: &'static str,
    /// The CPU architecture, in Go's names.
    pub arch: &'static str,
    /// CRIU's version, in libcriu's integer form.
    pub criu_version: &'static str,
}

/// The sets read, in order of preference.
pub const KEY_SETS: [KeySet; 4] = [
    KeySet {
        writer: "checkpointctl, CRI-O, containerd, criu-rs (org.criu.checkpoint.*)",
        name: CONTAINER_NAME,
        arch: HOST_ARCH,
        criu_version: CRIU_VERSION,
    },
    KeySet {
        writer: "Podman",
        name: "io.podman.annotations.checkpoint.name",
        arch: "io.podman.annotations.checkpoint.host.arch",
        criu_version: "io.podman.annotations.checkpoint.criu.version",
    },
    KeySet {
        writer: "CRI-O (older releases)",
        name: "io.kubernetes.cri-o.annotations.checkpoint.name",
        arch: "io.kubernetes.cri-o.annotations.checkpoint.host.arch",
        criu_version: "io.kubernetes.cri-o.annotations.checkpoint.criu.version",
    },
    KeySet {
        writer: "containerd (older releases)",
        name: "io.kubernetes.containerd.annotations.checkpoint.name",
        arch: "io.kubernetes.containerd.annotations.checkpoint.host.arch",
        criu_version: "io.kubernetes.containerd.annotations.checkpoint.criu.version",
    },
];

/// The key set whose container name `annotations` carry, if any.
pub fn key_set(annotations: &BTreeMap<String, String>) -> Option<&'static KeySet> {
    KEY_SETS.iter().find(|k| annotations.contains_key(k.name))
}

/// The checkpointed container's name, from whichever set states it.
pub fn container_name(annotations: &BTreeMap<String, String>) -> Option<&str> {
    key_set(annotations).and_then(|k| annotations.get(k.name).map(String::as_str))
}

/// The CPU architecture any set's annotation states.
pub fn stated_arch(annotations: &BTreeMap<String, String>) -> Option<&str> {
    KEY_SETS
        .iter()
        .find_map(|k| annotations.get(k.arch).map(String::as_str))
}

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
    /// it must be a checkpoint (any engine's set, see [`KEY_SETS`]), made
    /// on the same CPU architecture (from the annotations, else from
    /// `config_arch`, called only then: the image config's
    /// `architecture`), and, if it says which CRIU made it, by this
    /// host's (CRIU's images carry no compatibility promise across
    /// versions). A checkpoint that does not say is left to CRIU's own
    /// check of its images.
    pub fn check(
        &self,
        reference: &str,
        annotations: &BTreeMap<String, String>,
        config_arch: impl FnOnce() -> Result<Option<String>>,
    ) -> Result<()> {
        let Some(keys) = key_set(annotations) else {
            return Err(Error::NotACheckpoint {
                reference: reference.into(),
                hint: not_a_checkpoint_hint(annotations),
            });
        };
        let incompatible = |reason: String| Error::Incompatible {
            reference: reference.into(),
            reason,
        };
        let arch = match stated_arch(annotations) {
            Some(a) => a.to_string(),
            None => config_arch()?.ok_or_else(|| {
                incompatible(format!(
                    "neither its annotations ({}) nor its image config state a CPU architecture; \
                     add the annotation if you know it was made on {}",
                    keys.arch, self.arch
                ))
            })?,
        };
        if arch != self.arch {
            return Err(incompatible(format!(
                "it was made on {arch}, this host is {} (CRIU restores only on the CPU architecture it dumped)",
                self.arch
            )));
        }
        let stated = KEY_SETS
            .iter()
            .find_map(|k| annotations.get(k.criu_version));
        if let Some(v) = stated {
            let theirs = v.parse::<u32>().map(criu::Version::from_encoded).map_err(|_| {
                incompatible(format!(
                    "its CRIU version annotation {v:?} is not libcriu's integer form (40201 for 4.2.1)"
                ))
            })?;
            if theirs != self.criu_version {
                return Err(incompatible(format!(
                    "it was made by CRIU {theirs}, this host has CRIU {}; restore it with the same CRIU version",
                    self.criu_version
                )));
            }
        }
        Ok(())
    }
}

/// What to tell the user of an image without any set's container name.
fn not_a_checkpoint_hint(annotations: &BTreeMap<String, String>) -> String {
    let names: Vec<_> = KEY_SETS.iter().map(|k| k.name).collect();
    if annotations.is_empty() {
        format!(
            "its manifest has no annotations at all: if it is a checkpoint, a copy in Docker's \
             v2s2 format (docker push, skopeo copy --format v2s2) dropped them; copy it in OCI \
             format, or add one of {names:?}"
        )
    } else {
        format!("it carries none of {names:?}")
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
        h.check("r", &a, no_config).unwrap();
        // Kernel, cgroup and distribution may differ: CRIU copes.
        a.insert(HOST_KERNEL.into(), "5.10".into());
        h.check("r", &a, no_config).unwrap();
        let mut arch = a.clone();
        arch.insert(HOST_ARCH.into(), "arm64".into());
        let e = h.check("r", &arch, no_config).unwrap_err().to_string();
        assert!(e.contains("arm64") && e.contains("amd64"), "{e}");
        let mut newer = a.clone();
        newer.insert(CRIU_VERSION.into(), "40300".into());
        let e = h.check("r", &newer, no_config).unwrap_err().to_string();
        assert!(e.contains("CRIU 4.3.0") && e.contains("4.2.1"), "{e}");
        // No CRIU version: left to CRIU's own check.
        let mut unsaid = a.clone();
        unsaid.remove(CRIU_VERSION);
        h.check("r", &unsaid, no_config).unwrap();
        a.remove(CONTAINER_NAME);
        assert!(matches!(
            h.check("r", &a, no_config),
            Err(Error::NotACheckpoint { .. })
        ));
    }

    fn no_config() -> Result<Option<String>> {
        panic!("the config is fetched only when no annotation states the architecture")
    }

    fn only(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_engines_set_is_read_and_the_arch_may_come_from_the_config() {
        let h = here();
        // Podman's set, with its own arch and CRIU keys.
        let podman = only(&[
            ("io.podman.annotations.checkpoint.name", "web"),
            ("io.podman.annotations.checkpoint.host.arch", "amd64"),
            ("io.podman.annotations.checkpoint.criu.version", "40201"),
        ]);
        h.check("r", &podman, no_config).unwrap();
        assert_eq!(container_name(&podman), Some("web"));
        let mut podman_arm = podman.clone();
        podman_arm.insert(
            "io.podman.annotations.checkpoint.host.arch".into(),
            "arm64".into(),
        );
        assert!(matches!(
            h.check("r", &podman_arm, no_config),
            Err(Error::Incompatible { .. })
        ));
        // The buildah recipe: a name only; the arch comes from the config.
        for key in [
            "io.kubernetes.cri-o.annotations.checkpoint.name",
            "io.kubernetes.containerd.annotations.checkpoint.name",
            CONTAINER_NAME,
        ] {
            let a = only(&[(key, "counter")]);
            h.check("r", &a, || Ok(Some("amd64".into()))).unwrap();
            let e = h
                .check("r", &a, || Ok(Some("arm64".into())))
                .unwrap_err()
                .to_string();
            assert!(e.contains("arm64"), "{e}");
            let e = h.check("r", &a, || Ok(None)).unwrap_err().to_string();
            assert!(
                e.contains("architecture") && e.contains("annotation"),
                "{e}"
            );
        }
        // No annotations at all: the hint names the v2s2 copy.
        let e = h
            .check("r", &BTreeMap::new(), no_config)
            .unwrap_err()
            .to_string();
        assert!(e.contains("v2s2") && e.contains("OCI"), "{e}");
    }

    #[test]
    fn go_names_for_rust_arches() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("s390x"), "s390x");
    }
}
