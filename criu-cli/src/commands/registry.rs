//! `push` and `pull`: a checkpoint as a one-layer OCI image, in a
//! registry or an OCI image layout directory (`oci:DIR:TAG`).

use std::path::PathBuf;

use criu::Criu;
use criu_oci::archive::Limits;
use criu_oci::image::CheckpointImage;
use criu_oci::{layout, HostFacts, Registry, RegistryConfig};
use serde_json::json;

use super::archive::{checkpoint_dir, meta};
use crate::args::{PullArgs, PushArgs, RegistryArgs};
use crate::error::{CliError, CliResult};
use crate::output::print_json;
use crate::progress::{bytes_under, Bar, Spinner};

/// Where an image goes or comes from.
enum Target {
    /// An OCI layout directory and a tag.
    Layout(PathBuf, String),
    /// A registry reference.
    Registry(String),
}

fn target(reference: &str) -> CliResult<Target> {
    let Some(rest) = reference.strip_prefix("oci:") else {
        return Ok(Target::Registry(reference.to_string()));
    };
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
            Ok(Target::Layout(PathBuf::from(dir), tag.to_string()))
        }
        _ => Err(
            CliError::usage(format!("{reference:?} is not oci:DIR:TAG")).hint(
                "an OCI layout reference names the directory and a tag: oci:/var/tmp/layout:app",
            ),
        ),
    }
}

fn registry(a: &RegistryArgs) -> CliResult<Registry> {
    let ca_pem = match &a.registry_ca {
        Some(p) => Some(
            std::fs::read(p).map_err(|e| CliError::io(format!("reading {}", p.display()), e))?,
        ),
        None => None,
    };
    let basic_auth = match &a.username {
        Some(user) => {
            let password = std::env::var("CRIU_RS_REGISTRY_PASSWORD").map_err(|_| {
                CliError::usage("--username needs the password in CRIU_RS_REGISTRY_PASSWORD")
            })?;
            Some((user.clone(), password))
        }
        None => None,
    };
    let config = RegistryConfig {
        plain_http: a.plain_http,
        ca_pem,
        basic_auth,
        timeout: None,
    };
    Ok(Registry::new(&config)?)
}

/// A registry transfer's progress callback: a byte bar labelled `label`
/// on stderr when `shown` (not `--json`) and stderr is a terminal (the
/// bar checks), saying `unknown` while the layer's size is not known;
/// nothing otherwise. The bar goes when the callback is dropped.
fn bar(shown: bool, label: &'static str, unknown: &'static str) -> impl FnMut(u64, Option<u64>) {
    let mut bar = shown.then(|| Bar::new(label).unknown_total(unknown));
    move |done, total| {
        if let Some(b) = &mut bar {
            b.update(done, total.unwrap_or(0));
        }
    }
}

/// Pushes the checkpoint.
pub fn push(a: &PushArgs) -> CliResult {
    let images = checkpoint_dir(&a.images_dir)?;
    let host = HostFacts::current(&Criu::new())?;
    let meta = meta(&a.meta);
    let report = match target(&a.reference)? {
        Target::Layout(dir, tag) => {
            let size = bytes_under(images.path());
            let _spinner = Spinner::start(
                !a.json,
                format!(
                    "writing {} of images to {}",
                    indicatif::HumanBytes(size),
                    a.reference
                ),
                || None,
            );
            let image = CheckpointImage::build(&images, &meta, &host, a.compression.into())?;
            let digest = layout::write(&dir, &tag, &image)?;
            json!({
                "reference": a.reference,
                "manifest_digest": digest,
                "layer_digest": image.layer_digest(),
                "layer_bytes": image.layer().len(),
            })
        }
        Target::Registry(reference) => {
            let r = registry(&a.registry)?;
            let mut progress = bar(!a.json, "pushing", "gzip: its size is known at the end");
            let pushed = r.push_checkpoint_with_progress(
                &reference,
                &images,
                &meta,
                &host,
                a.compression.into(),
                &mut progress,
            )?;
            json!({
                "reference": a.reference,
                "layer_digest": pushed.layer_digest,
                "layer_bytes": pushed.push.layer_bytes,
                "elapsed_us": pushed.push.elapsed.as_micros() as u64,
            })
        }
    };
    if a.json {
        return print_json(&report);
    }
    println!(
        "pushed {} ({} bytes, layer {})",
        a.reference, report["layer_bytes"], report["layer_digest"]
    );
    Ok(())
}

/// Pulls and unpacks a checkpoint.
pub fn pull(a: &PullArgs) -> CliResult {
    let host = HostFacts::current(&Criu::new())?;
    let (unpacked, layer_bytes) = match target(&a.reference)? {
        Target::Layout(dir, tag) => {
            let into = a.target.clone();
            let _spinner = Spinner::start(
                !a.json,
                format!("reading {} into {}", a.reference, a.target.display()),
                move || Some(bytes_under(&into)),
            );
            let fetched = layout::read(&dir, &tag, &host)?;
            let bytes = fetched.layer_len();
            (fetched.unpack(&a.target, &Limits::default())?, bytes)
        }
        Target::Registry(reference) => {
            let r = registry(&a.registry)?;
            let mut progress = bar(!a.json, "pulling", "");
            let pulled = r.pull_checkpoint_with_progress(
                &reference,
                &host,
                &a.target,
                &Limits::default(),
                &mut progress,
            )?;
            (pulled.unpacked, pulled.pull.layer_bytes)
        }
    };
    let images = unpacked.root.join(criu_oci::archive::CHECKPOINT_DIR);
    if a.json {
        return print_json(&json!({
            "reference": a.reference,
            "target": unpacked.root,
            "images_dir": images,
            "layer_bytes": layer_bytes,
            "entries": unpacked.entries,
        }));
    }
    println!(
        "pulled {} into {}; restore with `criu-rs restore --images-dir {}`",
        a.reference,
        unpacked.root.display(),
        images.display()
    );
    Ok(())
}
