//! A checkpoint as a one-layer OCI image: the archive is the layer, the
//! `org.criu.checkpoint.*` annotations sit on the manifest, as
//! `checkpointctl build` makes them (Podman's `--create-image` makes the
//! same shape with its own `io.podman.annotations.checkpoint.*` keys; see
//! [`crate::annotations`] for what is read).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use oci_client::manifest::OciImageManifest;
use sha2::{Digest as _, Sha256};

use crate::annotations::{self, HostFacts};
use crate::archive::{self, ArchiveMeta, Compression, Limits, Unpacked};
use crate::error::{Error, Result};
use crate::parts::{Part, PART_FILE, PART_MEDIA_TYPE, PART_OFFSET};

/// A gzip-compressed tar layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// An uncompressed tar layer's media type.
pub const PLAIN_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// A zstd-compressed tar layer's media type (a mirror's recompression,
/// `podman push --compression-format zstd`).
pub const ZSTD_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's gzip layer (an image copied in Docker's v2s2 format).
pub const DOCKER_LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The layer media types read (the unpacker tells the compression from
/// the bytes, so each of these is read whatever it says).
pub const READ_LAYER_MEDIA_TYPES: [&str; 4] = [
    PLAIN_LAYER_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    ZSTD_LAYER_MEDIA_TYPE,
    DOCKER_LAYER_MEDIA_TYPE,
];
/// An OCI image manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A checkpoint image, ready to push or to write as a layout.
#[derive(Debug, Clone)]
pub struct CheckpointImage {
    /// The layer: the checkpoint archive (shared, not copied, by a push).
    layer: bytes::Bytes,
    /// `sha256:...` of `layer`, computed once.
    layer_digest: String,
    /// How the layer is compressed.
    pub compression: Compression,
    /// The image config (JSON).
    pub config: Vec<u8>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl CheckpointImage {
    /// Packs the dump in `images` (with `meta` for the engine files) into
    /// an image annotated with `host`'s facts, its layer compressed with
    /// `compression` (gzip, as the engines do, for images that are kept;
    /// none for a move, where checkpointed memory rarely shrinks and
    /// compressing it adds to the downtime). The layer is held in memory:
    /// to push a large checkpoint, [`crate::Registry::push_checkpoint`]
    /// streams it instead.
    pub fn build(
        images: &criu::ImagesDir,
        meta: &ArchiveMeta,
        host: &HostFacts,
        compression: Compression,
    ) -> Result<CheckpointImage> {
        let mut layer = Vec::new();
        let written = archive::write(images, meta, &mut layer, compression)?;
        // A plain layer is the tar stream itself, hashed as it was written.
        let layer_digest = match compression {
            Compression::None => written.diff_id.clone(),
            Compression::Gzip => sha256_digest(&layer),
        };
        Ok(CheckpointImage {
            layer: layer.into(),
            layer_digest,
            compression,
            config: image_config(host, &written.diff_id),
            annotations: checkpoint_annotations(meta, host),
        })
    }

    /// An image of an archive an engine already wrote (the file kubelet's
    /// checkpoint API leaves under `/var/lib/kubelet/checkpoints`, a
    /// `podman container checkpoint --export --compress none|gzip`, one of
    /// criu-oci's): its bytes become the layer unchanged, named `name`
    /// and annotated with `host`'s facts (which must be the checkpointing
    /// host's). The archive is read once, within `limits`, to check it
    /// holds a `checkpoint/` directory and is well formed; a zstd archive
    /// is refused (this crate writes no zstd layer: decompress it first).
    pub fn from_archive(
        archive: Vec<u8>,
        name: &str,
        host: &HostFacts,
        limits: &Limits,
    ) -> Result<CheckpointImage> {
        let compression = match archive.as_slice() {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => {
                return Err(Error::Malformed(
                    "a zstd archive: decompress it (zstd -d) and give the plain tar".into(),
                ))
            }
            _ => Compression::None,
        };
        let diff_id = archive::checked_diff_id(&archive, limits)?;
        let meta = ArchiveMeta {
            name: name.into(),
            ..ArchiveMeta::default()
        };
        let layer_digest = sha256_digest(&archive);
        Ok(CheckpointImage {
            layer: archive.into(),
            layer_digest,
            compression,
            config: image_config(host, &diff_id),
            annotations: checkpoint_annotations(&meta, host),
        })
    }

    /// The layer (the checkpoint archive).
    pub fn layer(&self) -> &[u8] {
        &self.layer
    }

    /// The layer's digest, `sha256:...`.
    pub fn layer_digest(&self) -> &str {
        &self.layer_digest
    }

    /// The OCI manifest of this image (the layer's digest is not computed
    /// again: for a large checkpoint that pass would be downtime).
    pub fn manifest(&self) -> OciImageManifest {
        checkpoint_manifest(
            &self.config,
            self.annotations.clone(),
            self.layer_media_type(),
            &self.layer_digest,
            self.layer.len() as u64,
        )
    }

    fn layer_media_type(&self) -> &'static str {
        layer_media_type(self.compression)
    }

    pub(crate) fn oci_layer(&self) -> oci_client::client::ImageLayer {
        oci_client::client::ImageLayer::new(
            self.layer.clone(),
            self.layer_media_type().into(),
            None,
        )
    }

    pub(crate) fn oci_config(&self) -> oci_client::client::Config {
        oci_client::client::Config::new(self.config.clone(), CONFIG_MEDIA_TYPE.into(), None)
    }
}

/// The layer's media type for `compression`.
pub(crate) fn layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::Gzip => LAYER_MEDIA_TYPE,
        Compression::None => PLAIN_LAYER_MEDIA_TYPE,
    }
}

/// The `org.criu.checkpoint.*` annotations of a checkpoint of `meta`'s
/// container made on `host`.
pub(crate) fn checkpoint_annotations(
    meta: &ArchiveMeta,
    host: &HostFacts,
) -> BTreeMap<String, String> {
    let mut annotations = host.annotations();
    annotations.insert(annotations::CONTAINER_NAME.into(), meta.name.clone());
    annotations.insert(annotations::ENGINE_NAME.into(), meta.engine_name().into());
    annotations.insert(
        annotations::ENGINE_VERSION.into(),
        meta.engine_version().into(),
    );
    if let Some(image) = &meta.rootfs_image_name {
        annotations.insert(annotations::ROOTFS_IMAGE_NAME.into(), image.clone());
    }
    annotations
}

/// The manifest of a one-layer checkpoint image: `config` (JSON), the
/// layer's media type, digest and size, and the annotations.
pub(crate) fn checkpoint_manifest(
    config: &[u8],
    annotations: BTreeMap<String, String>,
    media_type: &str,
    layer_digest: &str,
    layer_bytes: u64,
) -> OciImageManifest {
    let config = oci_client::client::Config::new(config.to_vec(), CONFIG_MEDIA_TYPE.into(), None);
    let mut m = OciImageManifest::build(&[], &config, Some(annotations));
    // The image spec says a manifest SHOULD name its media type.
    m.media_type = Some(MANIFEST_MEDIA_TYPE.into());
    m.layers.push(oci_client::manifest::OciDescriptor {
        media_type: media_type.into(),
        digest: layer_digest.into(),
        size: layer_bytes as i64,
        ..Default::default()
    });
    m
}

/// The image config (JSON) of a layer whose tar stream hashes to `diff_id`.
pub(crate) fn image_config(host: &HostFacts, diff_id: &str) -> Vec<u8> {
    image_config_with_parts(host, diff_id, &[])
}

/// The image config of a layer whose tar stream hashes to `diff_id`
/// followed by `parts` (each its own diff id: they are not compressed).
pub(crate) fn image_config_with_parts(host: &HostFacts, diff_id: &str, parts: &[Part]) -> Vec<u8> {
    let diff_ids: Vec<&str> = std::iter::once(diff_id)
        .chain(parts.iter().map(|p| p.digest.as_str()))
        .collect();
    let config = serde_json::json!({
        "architecture": host.arch,
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

/// A checkpoint image fetched from a registry or a layout: its annotations
/// and its layer, checked against its digest, spooled to an unnamed
/// temporary file (gone once closed), so that a checkpoint of any size
/// costs no memory.
#[derive(Debug)]
pub struct FetchedImage {
    /// Where it came from.
    pub reference: String,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    pub(crate) layer: Spooled,
}

impl FetchedImage {
    /// The layer's size in bytes.
    pub fn layer_len(&self) -> u64 {
        self.layer.len
    }

    /// The layer (the archive, plain or compressed) read into memory.
    pub fn read_layer(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.layer.len as usize);
        self.layer
            .reader()?
            .read_to_end(&mut out)
            .map_err(|e| Error::io("reading the spooled layer", e))?;
        Ok(out)
    }

    /// Unpacks the layer into `target` (created here), within `limits`.
    pub fn unpack(&self, target: &Path, limits: &Limits) -> Result<Unpacked> {
        archive::unpack(self.layer.reader()?, target, limits)
    }
}

/// A layer in an unnamed temporary file, already checked.
#[derive(Debug)]
pub(crate) struct Spooled {
    pub(crate) file: std::fs::File,
    pub(crate) len: u64,
}

impl Spooled {
    /// An empty spool in the temporary directory.
    pub(crate) fn new() -> Result<Spooled> {
        let file = tempfile::tempfile()
            .map_err(|e| Error::io("creating a temporary file for the layer", e))?;
        Ok(Spooled { file, len: 0 })
    }

    /// The layer from its start (reads through a second handle, so `&self` will do).
    fn reader(&self) -> Result<impl Read> {
        let mut f = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopening the spooled layer", e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("rewinding the spooled layer", e))?;
        Ok(io::BufReader::with_capacity(1 << 20, f.take(self.len)))
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Checks `data` against a descriptor's digest and size.
pub(crate) fn verify(what: &str, data: &[u8], digest: &str, size: i64) -> Result<()> {
    let actual = sha256_digest(data);
    if actual != digest {
        return Err(Error::Digest {
            what: what.into(),
            expected: digest.into(),
            actual,
        });
    }
    if size >= 0 && data.len() as u64 != size as u64 {
        return Err(Error::Malformed(format!(
            "{what} has {} bytes, its descriptor says {size}",
            data.len()
        )));
    }
    Ok(())
}

/// Adds `parts` to `manifest` as layers after the checkpoint archive.
pub(crate) fn add_parts(manifest: &mut OciImageManifest, parts: &[Part]) {
    for p in parts {
        manifest.layers.push(oci_client::manifest::OciDescriptor {
            media_type: PART_MEDIA_TYPE.into(),
            digest: p.digest.clone(),
            size: p.size as i64,
            annotations: Some(
                [
                    (PART_FILE.to_string(), p.file.clone()),
                    (PART_OFFSET.to_string(), p.offset.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        });
    }
}

/// The checkpoint layer of `manifest` and the parts after it, if any
/// (a migration image's, see [`crate::parts`]).
pub(crate) fn checkpoint_layers<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<(&'m oci_client::manifest::OciDescriptor, Vec<Part>)> {
    let Some((first, rest)) = manifest.layers.split_first() else {
        return checkpoint_layer(reference, manifest).map(|l| (l, Vec::new()));
    };
    if rest.is_empty() || rest.iter().any(|l| l.media_type != PART_MEDIA_TYPE) {
        return checkpoint_layer(reference, manifest).map(|l| (l, Vec::new()));
    }
    if !READ_LAYER_MEDIA_TYPES.contains(&first.media_type.as_str()) {
        return Err(Error::Malformed(format!(
            "{reference}: its first layer is a {:?}, not a tar archive (one of \
             {READ_LAYER_MEDIA_TYPES:?})",
            first.media_type
        )));
    }
    let parts = rest
        .iter()
        .map(|l| part_of(reference, l))
        .collect::<Result<Vec<_>>>()?;
    Ok((first, parts))
}

/// The part a part layer's descriptor describes.
fn part_of(reference: &str, l: &oci_client::manifest::OciDescriptor) -> Result<Part> {
    let bad =
        |what: &str| Error::Malformed(format!("{reference}: a part layer ({}) {what}", l.digest));
    let note = |key: &str| l.annotations.as_ref().and_then(|a| a.get(key));
    let file = note(PART_FILE).ok_or_else(|| bad("names no file"))?;
    let offset = note(PART_OFFSET)
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| bad("has no offset"))?;
    let size = u64::try_from(l.size).map_err(|_| bad("has a negative size"))?;
    Ok(Part {
        file: file.clone(),
        offset,
        digest: l.digest.clone(),
        size,
    })
}

/// The single checkpoint layer of `manifest`.
pub(crate) fn checkpoint_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m oci_client::manifest::OciDescriptor> {
    match manifest.layers.as_slice() {
        [one] if READ_LAYER_MEDIA_TYPES.contains(&one.media_type.as_str()) => Ok(one),
        [one] => Err(Error::Malformed(format!(
            "{reference}: its layer is a {:?}, not a tar archive (one of {READ_LAYER_MEDIA_TYPES:?})",
            one.media_type
        ))),
        layers => Err(Error::Malformed(format!(
            "{reference}: a checkpoint image has exactly one layer, the checkpoint archive; this one has {} ({:?}): \
             build it from scratch with the archive as its only layer",
            layers.len(),
            layers.iter().map(|l| &l.media_type).collect::<Vec<_>>()
        ))),
    }
}

/// The `architecture` of an image config (JSON), if it states one.
pub(crate) fn config_architecture(config: &[u8]) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_slice(config)
        .map_err(|e| Error::Malformed(format!("the image config: {e}")))?;
    Ok(v.get("architecture")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_string))
}
