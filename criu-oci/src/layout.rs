//! OCI image layout directories (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), for moving a checkpoint image without a registry:
//! `skopeo copy oci:DIR:TAG docker://...` pushes one later.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest};

use crate::annotations::HostFacts;
use crate::archive::{read_capped, HashingWriter, Limits};
use crate::error::{Error, Result};
use crate::image::{
    checkpoint_layer, config_architecture, sha256_digest, verify, CheckpointImage, FetchedImage,
    Spooled, MANIFEST_MEDIA_TYPE,
};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn layout_err(dir: &Path, message: impl Into<String>) -> Error {
    Error::Layout {
        path: dir.display().to_string(),
        message: message.into(),
    }
}

/// Writes `image` as a layout in `dir` (created; must not exist), tagged
/// `tag`. Returns the manifest's digest.
pub fn write(dir: &Path, tag: &str, image: &CheckpointImage) -> Result<String> {
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |e| Error::io(what, e)
    };
    fs::create_dir(dir).map_err(io("creating the layout"))?;
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io("creating blobs/sha256"))?;
    let manifest = serde_json::to_vec(&image.manifest())
        .map_err(|e| layout_err(dir, format!("encoding the manifest: {e}")))?;
    let manifest_digest = sha256_digest(&manifest);
    let blobs_and_digests = [
        (image.layer(), image.layer_digest().to_string()),
        (&image.config, sha256_digest(&image.config)),
        (&manifest, manifest_digest.clone()),
    ];
    for (data, digest) in blobs_and_digests {
        let hex = digest.trim_start_matches("sha256:");
        fs::write(blobs.join(hex), data).map_err(io("writing a blob"))?;
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(INDEX_MEDIA_TYPE.into()),
        manifests: vec![ImageIndexEntry {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: manifest_digest.clone(),
            size: manifest.len() as i64,
            platform: None,
            artifact_type: None,
            annotations: Some([(REF_NAME.to_string(), tag.to_string())].into()),
        }],
        artifact_type: None,
        annotations: None,
    };
    let index = serde_json::to_vec(&index)
        .map_err(|e| layout_err(dir, format!("encoding index.json: {e}")))?;
    fs::write(dir.join("index.json"), index).map_err(io("writing index.json"))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io("writing oci-layout"))?;
    Ok(manifest_digest)
}

/// The largest `index.json` read.
const INDEX_MAX: u64 = 1 << 20;
/// The largest manifest read (what registries accept, 4 MiB).
const MANIFEST_MAX: u64 = 4 << 20;
/// The largest image config read.
const CONFIG_MAX: u64 = 1 << 20;

/// Reads the image tagged `tag` from the layout in `dir` within
/// [`Limits::default`]: see [`read_limited`].
pub fn read(dir: &Path, tag: &str, host: &HostFacts) -> Result<FetchedImage> {
    read_limited(dir, tag, host, &Limits::default())
}

/// Reads the image tagged `tag` from the layout in `dir` (through an
/// image index, its entry for this host), checks that it is a checkpoint
/// `host` can restore (from the annotations, before the layer is read;
/// the config only if no annotation states the architecture), and
/// verifies every blob against its digest. Sizes are checked before
/// anything is read: `index.json` up to 1 MiB, manifests 4 MiB, the
/// config 1 MiB, the layer [`Limits::layer_bytes`].
pub fn read_limited(
    dir: &Path,
    tag: &str,
    host: &HostFacts,
    limits: &Limits,
) -> Result<FetchedImage> {
    let reference = format!("oci:{}:{tag}", dir.display());
    let index: OciImageIndex =
        serde_json::from_slice(&read_capped(&dir.join("index.json"), INDEX_MAX)?)
            .map_err(|e| layout_err(dir, format!("index.json: {e}")))?;
    let entry = index
        .manifests
        .iter()
        .find(|m| {
            m.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|t| t == tag)
        })
        .ok_or_else(|| layout_err(dir, format!("no image tagged {tag:?} in index.json")))?;
    let mut annotations = entry.annotations.clone().unwrap_or_default();
    annotations.remove(REF_NAME);
    let manifest = match entry.media_type.as_str() {
        INDEX_MEDIA_TYPE => {
            let inner: OciImageIndex =
                parse_blob(dir, "an image index", &entry.digest, entry.size)?;
            let platform_entry = pick_entry(dir, &inner, host)?;
            annotations.extend(platform_entry.annotations.clone().unwrap_or_default());
            parse_blob::<OciImageManifest>(
                dir,
                "the manifest",
                &platform_entry.digest,
                platform_entry.size,
            )?
        }
        _ => parse_blob::<OciImageManifest>(dir, "the manifest", &entry.digest, entry.size)?,
    };
    annotations.extend(manifest.annotations.clone().unwrap_or_default());
    host.check(&reference, &annotations, || {
        let c = &manifest.config;
        let data = read_small_blob(dir, "the image config", &c.digest, c.size, CONFIG_MAX)?;
        config_architecture(&data)
    })?;
    let layer = checkpoint_layer(&reference, &manifest)?;
    if u64::try_from(layer.size).map_or(true, |s| s > limits.layer_bytes) {
        return Err(Error::TooLarge {
            what: format!(
                "{reference}'s layer ({} bytes, as its manifest says)",
                layer.size
            ),
            limit: limits.layer_bytes,
        });
    }
    let spooled = spool_blob(dir, &layer.digest, layer.size)?;
    Ok(FetchedImage {
        reference,
        annotations,
        layer: spooled,
    })
}

/// The entry of an image index for linux on `host`'s architecture, or
/// its only entry.
fn pick_entry<'i>(
    dir: &Path,
    index: &'i OciImageIndex,
    host: &HostFacts,
) -> Result<&'i ImageIndexEntry> {
    let fits = |e: &&ImageIndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.architecture.to_string() == host.arch && p.os.to_string() == "linux")
    };
    match (
        index.manifests.iter().find(fits),
        index.manifests.as_slice(),
    ) {
        (Some(e), _) => Ok(e),
        (None, [only]) if only.platform.is_none() => Ok(only),
        _ => Err(layout_err(
            dir,
            format!("its image index has no entry for linux/{}", host.arch),
        )),
    }
}

/// A small blob (manifest, index, config), its size checked before it is
/// read and its digest after.
fn read_small_blob(dir: &Path, what: &str, digest: &str, size: i64, cap: u64) -> Result<Vec<u8>> {
    if u64::try_from(size).map_or(true, |s| s > cap) {
        return Err(Error::TooLarge {
            what: format!(
                "{what} of {} ({size} bytes, as its descriptor says)",
                dir.display()
            ),
            limit: cap,
        });
    }
    let data = read_capped(&blob_path(dir, digest)?, cap)?;
    verify(what, &data, digest, size)?;
    Ok(data)
}

fn parse_blob<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
    digest: &str,
    size: i64,
) -> Result<T> {
    let data = read_small_blob(dir, what, digest, size, MANIFEST_MAX)?;
    serde_json::from_slice(&data).map_err(|e| layout_err(dir, format!("{what}: {e}")))
}

/// Copies the blob `digest` into a temporary file while hashing it (so
/// that what is checked is what will be read, whatever happens to the
/// layout meanwhile), and checks its digest and size.
fn spool_blob(dir: &Path, digest: &str, size: i64) -> Result<Spooled> {
    let mut blob = fs::File::open(blob_path(dir, digest)?)
        .map_err(|e| Error::io(format!("opening the layer blob of {}", dir.display()), e))?;
    let mut spool = Spooled::new()?;
    let mut hashing = HashingWriter::new(&mut spool.file);
    // Never more than the descriptor says, plus one byte to see a longer file.
    let cap = u64::try_from(size).unwrap_or(0).saturating_add(1);
    spool.len = io::copy(&mut (&mut blob).take(cap), &mut hashing)
        .map_err(|e| Error::io(format!("copying the layer blob of {}", dir.display()), e))?;
    let actual = hashing.digest();
    if actual != digest {
        return Err(Error::Digest {
            what: "the checkpoint layer".into(),
            expected: digest.into(),
            actual,
        });
    }
    if size >= 0 && spool.len != size as u64 {
        return Err(Error::Malformed(format!(
            "the checkpoint layer has {} bytes, its descriptor says {size}",
            spool.len
        )));
    }
    Ok(spool)
}

fn blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| layout_err(dir, format!("unsupported or malformed digest {digest:?}")))?;
    Ok(dir.join("blobs/sha256").join(hex))
}
