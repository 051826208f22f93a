//! OCI image layout directories (`oci-layout`, `index.json`,
//! `blobs/sha256/...`), for moving a checkpoint image without a registry:
//! `skopeo copy oci:DIR:TAG docker://...` pushes one later.

use std::fs;
use std::io;
use std::path::Path;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest};

use crate::annotations::HostFacts;
use crate::archive::HashingWriter;
use crate::error::{Error, Result};
use crate::image::{
    checkpoint_layer, sha256_digest, verify, CheckpointImage, FetchedImage, Spooled,
};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
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

/// Reads the image tagged `tag` from the layout in `dir`, checks that it
/// is a checkpoint `host` can restore (from the annotations, before the
/// layer is read), and verifies every blob against its digest.
pub fn read(dir: &Path, tag: &str, host: &HostFacts) -> Result<FetchedImage> {
    let reference = format!("oci:{}:{tag}", dir.display());
    let index: OciImageIndex = serde_json::from_slice(&read_file(dir, "index.json")?)
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
    let manifest_bytes = read_blob(dir, &entry.digest)?;
    verify("the manifest", &manifest_bytes, &entry.digest, entry.size)?;
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| layout_err(dir, format!("the manifest: {e}")))?;
    let annotations = manifest.annotations.clone().unwrap_or_default();
    host.check(&reference, &annotations)?;
    let layer = checkpoint_layer(&reference, &manifest)?;
    let spooled = spool_blob(dir, &layer.digest, layer.size)?;
    Ok(FetchedImage {
        reference,
        annotations,
        layer: spooled,
    })
}

/// Copies the blob `digest` into a temporary file while hashing it (so
/// that what is checked is what will be read, whatever happens to the
/// layout meanwhile), and checks its digest and size.
fn spool_blob(dir: &Path, digest: &str, size: i64) -> Result<Spooled> {
    let mut blob = fs::File::open(blob_path(dir, digest)?)
        .map_err(|e| Error::io(format!("opening the layer blob of {}", dir.display()), e))?;
    let mut spool = Spooled::new()?;
    let mut hashing = HashingWriter::new(&mut spool.file);
    spool.len = io::copy(&mut blob, &mut hashing)
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

fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    fs::read(dir.join(name))
        .map_err(|e| Error::io(format!("reading {name} of {}", dir.display()), e))
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    fs::read(blob_path(dir, digest)?)
        .map_err(|e| Error::io(format!("reading a blob of {}", dir.display()), e))
}

fn blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| layout_err(dir, format!("unsupported or malformed digest {digest:?}")))?;
    Ok(dir.join("blobs/sha256").join(hex))
}
