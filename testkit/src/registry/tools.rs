//! Tools nobody here wrote, run against criu-oci's images: `skopeo`
//! (copies between a registry and an OCI layout, recompressing on the
//! way) and `buildah` (builds a checkpoint image the way the Kubernetes
//! documentation and containerd's CRI test do: `from scratch`, `add` the
//! archive, `config --annotation`, `commit`). Both are Debian packages the
//! set-up installs.

use std::io;
use std::path::Path;
use std::process::{Command, Output};

use crate::hosts::Host;

fn checked(what: &str, out: io::Result<Output>) -> io::Result<String> {
    let out = out.map_err(|e| {
        io::Error::other(format!(
            "running {what}: {e}; install it with scripts/setup.sh (Debian packages skopeo, buildah)"
        ))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `skopeo ARGS` in `host`'s network namespace (so that it reaches
/// the test registry), with TLS verification off for plain-HTTP registries.
pub fn skopeo(host: &Host, args: &[&str]) -> io::Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host.netns_path().display()))
        .args(["skopeo", "--insecure-policy"])
        .args(args)
        .output();
    checked(&format!("skopeo {}", args.join(" ")), out)
}

/// Builds a checkpoint image from the archive `archive` (a plain tar) as
/// the buildah recipe does, annotated `annotation=name` and nothing else,
/// into the OCI layout `layout` tagged `tag`. buildah's storage is a
/// private directory under `work` (vfs driver), removed with it.
pub fn buildah_checkpoint_image(
    archive: &Path,
    annotation: &str,
    name: &str,
    work: &Path,
    layout: &Path,
    tag: &str,
) -> io::Result<()> {
    let root = work.join("buildah-root");
    let runroot = work.join("buildah-runroot");
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output();
        checked(&format!("buildah {}", args.join(" ")), out)
    };
    let container = buildah(&["from", "scratch"])?.trim().to_string();
    let archive = archive.display().to_string();
    let built = (|| {
        buildah(&["add", &container, &archive, "/"])?;
        buildah(&[
            "config",
            "--annotation",
            &format!("{annotation}={name}"),
            &container,
        ])?;
        let dest = format!("oci:{}:{tag}", layout.display());
        buildah(&["commit", "--format", "oci", &container, &dest])
    })();
    let removed = buildah(&["rm", &container]);
    built?;
    removed?;
    // vfs layers are plain directories; the storage goes with `work`.
    Ok(())
}
