//! Pushing checkpoint images to and pulling them from an OCI registry
//! (the distribution API) through `oci-client`. The client is async; a
//! private single-thread tokio runtime makes the API here blocking.
//!
//! Checkpoints stream both ways with bounded memory:
//! [`Registry::push_checkpoint`] packs while it uploads;
//! [`Registry::pull_checkpoint`] unpacks while it downloads and keeps
//! nothing unless the whole layer matched its digest (oci-client hashes
//! every byte as it arrives), so CRIU never sees a byte of an altered
//! one; [`Registry::pull`] streams the layer into a temporary file and
//! hands it on only once the digest matched. ([`Registry::push`] sends a
//! [`CheckpointImage`] already in memory.) For a move,
//! [`Registry::push_checkpoint_while`] pushes the pages in parts while
//! CRIU writes them; [`Registry::pull_checkpoint`] writes each part only
//! once it matched its digest (see [`crate::parts`]).
//!
//! What oci-client 0.18 offers, and what is used: `pull_blob` into any
//! `AsyncWrite`, verifying the layer's digest (and the registry's
//! `Docker-Content-Digest`) after the last byte; `push_blob_stream`, one
//! streamed `PUT` given the digest and size in advance; and
//! `push_blob_stream_chunked`, which computes the digest as it goes but
//! sends one `PATCH` per 4 MiB (its chunk size is not configurable, and
//! smaller stream items are not merged). Manifests and configs are small
//! and go whole.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use tokio::sync::mpsc;

use crate::annotations::HostFacts;
use crate::archive::{self, ArchiveMeta, Compression, Limits, Unpacked};
use crate::error::{Error, Result};
use crate::fetch::{FetchError, ManifestFetcher, MANIFEST_MAX};
use crate::image::{
    add_parts, checkpoint_annotations, checkpoint_layers, checkpoint_manifest, config_architecture,
    image_config_with_parts, layer_media_type, sha256_digest, CheckpointImage, FetchedImage,
    Spooled, PLAIN_LAYER_MEDIA_TYPE,
};
use crate::parts::{self, Assembly, Part};
use crate::stream::{self, Capped, Chunks, Counted, PieceWriter, Pieces};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS (a registry on a private test network).
    pub plain_http: bool,
    /// A PEM CA certificate to trust besides the system's (a cluster's own CA).
    pub ca_pem: Option<Vec<u8>>,
    /// User name and password for HTTP basic authentication.
    pub basic_auth: Option<(String, String)>,
    /// Connect and read timeout (default 30 s).
    pub timeout: Option<Duration>,
}

/// What a push or pull cost.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes of the layers moved (the archive, and the parts of a
    /// migration image's pages, see [`crate::parts`]).
    pub layer_bytes: u64,
    /// Wall time of the whole operation.
    pub elapsed: Duration,
}

/// A registry client with its own runtime.
pub struct Registry {
    client: Client,
    /// Manifests are fetched here, capped (oci-client reads them whole).
    manifests: ManifestFetcher,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client with `config`.
    pub fn new(config: &RegistryConfig) -> Result<Registry> {
        // reqwest is built without a bundled crypto provider; ring it is.
        // (Fails harmlessly when one is installed already.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = config.timeout.unwrap_or(Duration::from_secs(30));
        let client_config = ClientConfig {
            protocol: if config.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: config
                .ca_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // One POST and one PUT per blob instead of POST, PATCH, PUT:
            // each request costs the registry tens of ms of file work.
            use_monolithic_push: true,
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the registry client's runtime", e))?;
        let manifests = ManifestFetcher::new(config.plain_http, config.ca_pem.as_deref(), timeout)
            .map_err(|e| Error::Registry {
                what: "setting up the manifest client".into(),
                message: error_chain(&e),
            })?;
        Ok(Registry {
            client: Client::new(client_config),
            manifests,
            auth: match &config.basic_auth {
                Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
                None => RegistryAuth::Anonymous,
            },
            runtime,
        })
    }

    /// Asks the registry of `reference` for that manifest once, with the
    /// credentials: so that an unreachable registry or refused credentials
    /// are found before a move stops its source, and so that the client's
    /// first-request set-up (seen: ~0.5 s in a debug build) is not paid
    /// while the source is stopped. A manifest that does not exist yet is
    /// fine.
    pub fn ping(&self, reference: &str) -> Result<Duration> {
        let start = Instant::now();
        let r = parse(reference)?;
        match self
            .runtime
            .block_on(self.client.fetch_manifest_digest(&r, &self.auth))
        {
            Ok(_) => Ok(start.elapsed()),
            Err(e) if is_not_found(&e) => Ok(start.elapsed()),
            Err(e) => Err(classify(&r, "ping", e)),
        }
    }

    /// Pushes `image` as `reference` (`host:port/repo:tag`).
    pub fn push(&self, reference: &str, image: &CheckpointImage) -> Result<Transfer> {
        let start = Instant::now();
        let r = parse(reference)?;
        self.runtime
            .block_on(self.client.push(
                &r,
                &[image.oci_layer()],
                image.oci_config(),
                &self.auth,
                Some(image.manifest()),
            ))
            .map_err(|e| classify(&r, "push", e))?;
        Ok(Transfer {
            layer_bytes: image.layer().len() as u64,
            elapsed: start.elapsed(),
        })
    }

    /// Pulls the checkpoint image `reference` within [`Limits::default`]:
    /// see [`Registry::pull_limited`].
    pub fn pull(&self, reference: &str, host: &HostFacts) -> Result<(FetchedImage, Transfer)> {
        self.pull_limited(reference, host, &Limits::default())
    }

    /// Pulls the checkpoint image `reference`: first its manifest (an
    /// image index's entry for this host), whose annotations must say it
    /// is a checkpoint `host` can restore (the image config, at most
    /// 1 MiB, is fetched only if no annotation states the CPU
    /// architecture), then its layer, refused before a byte of it is
    /// fetched if the manifest announces more than
    /// [`Limits::layer_bytes`], streamed into an unnamed temporary file
    /// (never more than the manifest's size) and verified against the
    /// manifest's digest before it is returned. The whole pull is
    /// abandoned once [`Limits::deadline`] has passed.
    pub fn pull_limited(
        &self,
        reference: &str,
        host: &HostFacts,
        limits: &Limits,
    ) -> Result<(FetchedImage, Transfer)> {
        let start = Instant::now();
        let deadline = start + limits.deadline;
        let r = parse(reference)?;
        let (annotations, layer, parts) = self.checked_manifest(&r, reference, host, deadline)?;
        if !parts.is_empty() {
            return Err(Error::Malformed(format!(
                "{reference} is a migration image whose pages travel in {} part layers: \
                 pull it with Registry::pull_checkpoint",
                parts.len()
            )));
        }
        let size = layer_size(reference, &layer, limits)?;
        let mut spool = Spooled::new()?;
        let out = Capped::new(&mut spool, size);
        // oci-client hashes the blob as it streams and fails with
        // `DigestError` (our `Error::Digest`, see `classify`) when it does
        // not match; the spool is then dropped, unread. The tests alter a
        // blob in the registry's storage and see it refused, so a client
        // that stopped checking would fail them.
        self.before(
            deadline,
            limits,
            "pull (layer)",
            &r,
            self.client.pull_blob(&r, &layer, out),
        )?
        .map_err(|e| classify(&r, "pull (layer)", e))?;
        if spool.len != size {
            return Err(Error::Malformed(format!(
                "{reference}: the layer has {} bytes, its manifest says {}",
                spool.len, layer.size
            )));
        }
        Ok((
            FetchedImage {
                reference: reference.into(),
                annotations,
                layer: spool,
            },
            Transfer {
                layer_bytes: size,
                elapsed: start.elapsed(),
            },
        ))
    }

    /// Pulls the checkpoint image `reference` and unpacks it into
    /// `target` (created here, removed again on failure) within `limits`,
    /// the unpacking overlapping the download: the manifest first, checked
    /// as [`Registry::pull_limited`] does (nothing more is downloaded if
    /// it is refused), then the layer, streamed through a bounded queue (a
    /// few MiB) to a thread that unpacks it. oci-client hashes every byte
    /// as it arrives; the unpacked files are returned only once the whole
    /// layer matched its digest, and removed otherwise, so CRIU never sees
    /// a byte of an altered layer. (The unpacker does read unverified
    /// bytes: it is the same one that refuses escaping paths, links and
    /// sizes beyond `limits` in any archive; once it refuses an entry the
    /// download stops, the rest of the layer is not fetched. A plain tar
    /// layer unpacks to no more than its declared size.
    /// [`Registry::pull_limited`] verifies before anything reads.) A
    /// migration image's pages parts ([`Registry::push_checkpoint_while`])
    /// follow the archive, each downloaded into memory and written into
    /// its pages image only once it matched its digest.
    pub fn pull_checkpoint(
        &self,
        reference: &str,
        host: &HostFacts,
        target: &Path,
        limits: &Limits,
    ) -> Result<PulledCheckpoint> {
        self.pull_checkpoint_with_progress(reference, host, target, limits, &mut |_, _| {})
    }

    /// [`Registry::pull_checkpoint`], calling `progress(done, total)` as
    /// the layer arrives: `done` the bytes of the layer received so far
    /// (never decreasing), `total` its size as its manifest says (always
    /// `Some` for a pull). It is called on this thread, at most every
    /// [`PROGRESS_EVERY`] while bytes arrive, and with the final count
    /// when the download ends (successful or not: the result says which).
    /// It is not called before the manifest was accepted.
    pub fn pull_checkpoint_with_progress(
        &self,
        reference: &str,
        host: &HostFacts,
        target: &Path,
        limits: &Limits,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PulledCheckpoint> {
        self.pull_checkpoint_prefetched(reference, host, target, limits, progress, None)
    }

    /// [`Registry::pull_checkpoint_with_progress`], the pages parts taken
    /// from `prefetched` (fetched and checked part by part while the
    /// source pushed, [`Registry::prefetch_parts`]) when it holds any:
    /// they must be exactly the parts the manifest lists, and are linked
    /// into the unpacked checkpoint directory only once the manifest and
    /// the archive passed every check.
    pub(crate) fn pull_checkpoint_prefetched(
        &self,
        reference: &str,
        host: &HostFacts,
        target: &Path,
        limits: &Limits,
        progress: &mut dyn FnMut(u64, Option<u64>),
        prefetched: Option<&Prefetched>,
    ) -> Result<PulledCheckpoint> {
        let start = Instant::now();
        let deadline = start + limits.deadline;
        let r = parse(reference)?;
        let (annotations, layer, parts) = self.checked_manifest(&r, reference, host, deadline)?;
        let prefetched = prefetched.filter(|p| !p.parts.is_empty());
        if let Some(p) = prefetched {
            same_parts(reference, &parts, &p.parts)?;
        }
        let size = layer_size(reference, &layer, limits)?;
        let parts_bytes: u64 = parts.iter().map(|p| p.size).sum();
        let mut unpack_limits = *limits;
        if layer.media_type == PLAIN_LAYER_MEDIA_TYPE {
            unpack_limits.total_bytes = unpack_limits.total_bytes.min(size);
        }
        let unpack_limits = &unpack_limits;
        let (writer, pieces) = PieceWriter::channel();
        let moved = Arc::new(AtomicU64::new(0));
        let writer = Capped::new(Counted::new(writer, moved.clone()), size);
        let (pulled, unpacked) = std::thread::scope(|s| {
            let unpacker = s.spawn(move || unpack_all(pieces, target, unpack_limits));
            let pulled = self.before(
                deadline,
                limits,
                "pull (layer)",
                &r,
                reporting(
                    self.client.pull_blob(&r, &layer, writer),
                    &moved,
                    Some(size + parts_bytes),
                    progress,
                ),
            );
            (pulled, unpacker.join())
        });
        let (unpacked, done) =
            unpacked.map_err(|_| Error::Malformed("the unpacking thread panicked".into()))?;
        let refused = |e: Error| {
            if let Ok(u) = &unpacked {
                let _ = std::fs::remove_dir_all(&u.root);
            }
            Err(e)
        };
        let pulled = match pulled {
            Err(e) => return refused(e),
            Ok(Ok(())) => start.elapsed(),
            // The unpacker refused the archive and stopped reading: its
            // reason is the one that counts (the download was cut short
            // for it, so no digest was computed).
            Ok(Err(e)) if unpacked.is_err() && stopped_reading(&e) => {
                return Err(unpacked.unwrap_err())
            }
            // A digest mismatch (or a broken download) says more than what
            // the unpacker made of the bytes.
            Ok(Err(e)) => return refused(classify(&r, "pull (layer)", e)),
        };
        let unpacked = unpacked?;
        let parts_start = Instant::now();
        let pulled = match parts.is_empty() {
            true => pulled,
            false => {
                let total = (size + parts_bytes, moved, progress);
                let placed = match prefetched {
                    Some(p) => place_prefetched(p, &unpacked),
                    None => self.pull_parts(&r, &parts, &unpacked, limits, deadline, total),
                };
                match placed {
                    Ok(()) => start.elapsed(),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&unpacked.root);
                        return Err(e);
                    }
                }
            }
        };
        Ok(PulledCheckpoint {
            unpacked,
            annotations,
            pull: Transfer {
                layer_bytes: size + parts_bytes,
                elapsed: pulled,
            },
            unpack: done.saturating_duration_since(start + pulled),
            parts: match parts.is_empty() {
                true => Duration::ZERO,
                false => parts_start.elapsed(),
            },
        })
    }

    /// Fetches the parts `announced` by a source still pushing, from
    /// `reference`'s repository, as they come: [`PULL_PARTS_IN_FLIGHT`]
    /// at a time, each checked (a pages image's name, the next offset of
    /// its file, within `limits`) before it is fetched, held in memory
    /// until its whole blob matched its digest, and only then written
    /// into its pages image in `dir` (created here, private; the caller
    /// removes it). Runs on this thread until `announced` ends and every
    /// fetch is done, a fetch fails, `stop` resolves (its sender dropped:
    /// the migration failed), or `limits.deadline` passes.
    pub(crate) fn prefetch_parts(
        &self,
        reference: &str,
        announced: mpsc::UnboundedReceiver<Part>,
        stop: tokio::sync::oneshot::Receiver<()>,
        dir: &Path,
        limits: &Limits,
    ) -> Result<Prefetched> {
        let deadline = Instant::now() + limits.deadline;
        let r = parse(reference)?;
        let r = &r;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let moved = Arc::new(AtomicU64::new(0));
        let mut plan = Assembly::new(dir, limits.total_bytes);
        let first_fetch = std::cell::Cell::new(None);
        let fetches = futures_util::stream::unfold(announced, |mut rx| async {
            rx.recv().await.map(|part| (part, rx))
        })
        .map(|part| {
            // Checked on arrival, in order, before any byte is fetched.
            let planned = plan.plan(&part);
            first_fetch.set(first_fetch.get().or_else(|| Some(Instant::now())));
            let moved = moved.clone();
            async move {
                planned?;
                let data = self.fetch_part(r, &part, &moved).await?;
                Ok::<_, Error>((part, data))
            }
        })
        .buffered(PULL_PARTS_IN_FLIGHT);
        let mut assembly = Assembly::new(dir, limits.total_bytes);
        let first_fetch = &first_fetch;
        let all = async move {
            let mut done = Prefetched {
                dir: dir.to_path_buf(),
                parts: Vec::new(),
                first_fetch: None,
                first_written: None,
            };
            let mut fetches = std::pin::pin!(fetches);
            while let Some(fetched) = fetches.next().await {
                let (part, data) = fetched?;
                write_part(r, &mut assembly, &part, &data)?;
                done.first_written.get_or_insert_with(Instant::now);
                done.parts.push(part);
            }
            done.first_fetch = first_fetch.get();
            Ok(done)
        };
        let stopped = async {
            let _ = stop.await;
            Err(Error::Malformed(
                "the migration failed while announced parts were fetched".into(),
            ))
        };
        let what = "pull (a part announced by the source)";
        let (all, stopped) = (std::pin::pin!(all), std::pin::pin!(stopped));
        let ended = self.before(
            deadline,
            limits,
            what,
            r,
            futures_util::future::select(all, stopped),
        )?;
        ended.factor_first().0
    }

    /// Downloads `parts`, [`PULL_PARTS_IN_FLIGHT`] at a time, each into memory
    /// and checked against its digest (by oci-client) before
    /// [`Assembly`] writes it into the unpacked checkpoint directory, in
    /// order; all of them are checked for names, order and sizes before
    /// the first is fetched. `(total, moved, progress)` go on reporting
    /// the pull's progress.
    fn pull_parts(
        &self,
        r: &Reference,
        parts: &[Part],
        unpacked: &Unpacked,
        limits: &Limits,
        deadline: Instant,
        (total, moved, progress): (u64, Arc<AtomicU64>, ProgressFn<'_>),
    ) -> Result<()> {
        let dir = unpacked.root.join(archive::CHECKPOINT_DIR);
        let mut plan = Assembly::new(&dir, limits.total_bytes);
        for part in parts {
            plan.plan(part)?;
        }
        let what = "pull (a part of the pages)";
        let fetches = futures_util::stream::iter(parts)
            .map(|part| {
                let moved = moved.clone();
                async move {
                    let data = self.fetch_part(r, part, &moved).await?;
                    Ok::<_, Error>((part, data))
                }
            })
            .buffered(PULL_PARTS_IN_FLIGHT);
        let mut assembly = Assembly::new(&dir, limits.total_bytes);
        let all = async {
            let mut fetches = std::pin::pin!(fetches);
            while let Some(fetched) = fetches.next().await {
                let (part, data) = fetched?;
                write_part(r, &mut assembly, part, &data)?;
            }
            Ok(())
        };
        let all = reporting(all, &moved, Some(total), progress);
        self.before(deadline, limits, what, r, all)?
    }

    /// The blob of `part` in memory (at most its size), returned only
    /// once it matched its digest, its bytes counted into `moved`.
    /// oci-client's blob stream is used, not its `pull_blob`: that hashes
    /// every byte twice, for the descriptor's digest and for the
    /// registry's `Docker-Content-Digest` header, even when the two are
    /// the same (as a registry's are); the stream hashes once then, twice
    /// only if the header names another digest, and ends with an error
    /// unless every digest matched.
    async fn fetch_part(&self, r: &Reference, part: &Part, moved: &AtomicU64) -> Result<Vec<u8>> {
        let what = "pull (a part of the pages)";
        let desc = OciDescriptor {
            media_type: parts::PART_MEDIA_TYPE.into(),
            digest: part.digest.clone(),
            size: part.size as i64,
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(r, &desc)
            .await
            .map_err(|e| classify(r, what, e))?;
        let mut data = Vec::with_capacity(part.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify_stream(r, what, e))?;
            if data.len() + chunk.len() > part.size as usize {
                return Err(Error::Registry {
                    what: format!("{what} of {r}"),
                    message: format!(
                        "the registry sent more than the {} bytes the manifest announces",
                        part.size
                    ),
                });
            }
            data.extend_from_slice(&chunk);
            moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Runs `fut` on the runtime, abandoned at `deadline`.
    fn before<F: std::future::Future>(
        &self,
        deadline: Instant,
        limits: &Limits,
        what: &str,
        r: &Reference,
        fut: F,
    ) -> Result<F::Output> {
        self.runtime
            // The timer is made inside the runtime, which it needs.
            .block_on(async { tokio::time::timeout_at(deadline.into(), fut).await })
            .map_err(|_| Error::Registry {
                what: format!("{what} of {r}"),
                message: format!(
                    "not finished within the pull's deadline of {:?} (Limits::deadline); \
                     raise it for a slow link or a large checkpoint",
                    limits.deadline
                ),
            })
    }

    /// The manifest of `r` (through an image index, the entry for this
    /// host), refused unless its annotations say it is a checkpoint
    /// `host` can restore; its annotations and its layer. The image
    /// config is fetched (capped) only if no annotation states the CPU
    /// architecture.
    fn checked_manifest(
        &self,
        r: &Reference,
        reference: &str,
        host: &HostFacts,
        deadline: Instant,
    ) -> Result<(BTreeMap<String, String>, OciDescriptor, Vec<Part>)> {
        let limits = Limits::default();
        let fetch = |r: &Reference| {
            let fetched = self.before(
                deadline,
                &limits,
                "pull (manifest)",
                r,
                self.manifests.fetch(&self.client, &self.auth, r),
            )?;
            fetched.map_err(|e| match e {
                FetchError::Client(e) => classify(r, "pull (manifest)", e),
                FetchError::TooLarge => Error::TooLarge {
                    what: format!("the manifest of {r}"),
                    limit: MANIFEST_MAX as u64,
                },
            })
        };
        let manifest = fetch(r)?;
        let (manifest, r, mut annotations) = match manifest {
            OciManifest::Image(m) => (m, r.clone(), BTreeMap::new()),
            OciManifest::ImageIndex(index) => {
                let entry = index_entry(reference, &index, host)?;
                let by_digest = r.clone_with_digest(entry.digest.clone());
                match fetch(&by_digest)? {
                    OciManifest::Image(m) => {
                        (m, by_digest, entry.annotations.clone().unwrap_or_default())
                    }
                    OciManifest::ImageIndex(_) => {
                        return Err(Error::Malformed(format!(
                            "{reference}: an image index whose entry for {} is another index; \
                             point at the checkpoint image's own manifest",
                            host.arch
                        )))
                    }
                }
            }
        };
        // The manifest's own annotations win over its index entry's.
        annotations.extend(manifest.annotations.clone().unwrap_or_default());
        host.check(reference, &annotations, || {
            let config = &manifest.config;
            if u64::try_from(config.size).map_or(true, |s| s > CONFIG_MAX) {
                return Err(Error::TooLarge {
                    what: format!("{reference}'s image config ({} bytes)", config.size),
                    limit: CONFIG_MAX,
                });
            }
            let mut data = Vec::new();
            self.before(
                deadline,
                &limits,
                "pull (config)",
                &r,
                self.client
                    .pull_blob(&r, config, Capped::new(&mut data, CONFIG_MAX)),
            )?
            .map_err(|e| classify(&r, "pull (config)", e))?;
            config_architecture(&data)
        })?;
        let (layer, parts) = checkpoint_layers(reference, &manifest)?;
        Ok((annotations, layer.clone(), parts))
    }

    /// Packs the dump in `images` (with `meta`'s engine files and `host`'s
    /// facts as annotations) and pushes it as `reference`, streaming: a
    /// thread writes the archive in chunks of a few MiB while the client
    /// sends them, so packing overlaps the upload and memory stays bounded
    /// (about 16 MiB, whatever the checkpoint's size). A plain layer
    /// ([`Compression::None`], the one for moves) goes up in one streamed
    /// `PUT`, its size and digest taken by a first pass that hashes the
    /// images without keeping them; a gzip layer as a chunked upload (one
    /// `PATCH` per 4 MiB, the digest computed as it goes), or in one `PUT`
    /// when it fits one chunk. If packing fails, the upload is abandoned
    /// before it is committed, and no manifest is pushed.
    pub fn push_checkpoint(
        &self,
        reference: &str,
        images: &criu::ImagesDir,
        meta: &ArchiveMeta,
        host: &HostFacts,
        compression: Compression,
    ) -> Result<PushedCheckpoint> {
        self.push_checkpoint_with_progress(
            reference,
            images,
            meta,
            host,
            compression,
            &mut |_, _| {},
        )
    }

    /// [`Registry::push_checkpoint`], calling `progress(done, total)` as
    /// the layer goes up: `done` the bytes of the layer handed to the
    /// connection so far (never decreasing), `total` the layer's size
    /// when it is known before the upload (`Some` for a plain layer,
    /// whose size a first pass measures; `None` for a gzip one). It is
    /// called on this thread, at most every [`PROGRESS_EVERY`] while
    /// bytes go, and with the final count when the upload ends
    /// (successful or not: the result says which).
    pub fn push_checkpoint_with_progress(
        &self,
        reference: &str,
        images: &criu::ImagesDir,
        meta: &ArchiveMeta,
        host: &HostFacts,
        compression: Compression,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PushedCheckpoint> {
        let start = Instant::now();
        let r = parse(reference)?;
        self.runtime.block_on(
            self.client
                .store_auth_if_needed(r.resolve_registry(), &self.auth),
        );
        let archive = Archive {
            images,
            meta,
            host,
            compression,
            parts: &[],
        };
        self.push_archive(&r, &archive, start, progress)
    }

    /// Runs `dumping` (a dump of the tree into `images`, returning once
    /// the images are complete) while threads push CRIU's pages images
    /// to `reference`'s repository as they are written, in parts of
    /// 32 MiB each checked by its digest (see [`crate::parts`]), two
    /// uploads at a time; then
    /// pushes the rest of the dump as the checkpoint archive, without the
    /// pages images, and the manifest listing the archive and the parts
    /// as layers. Returns what `dumping` returned and what the push did,
    /// whose `push.elapsed` counts from the dump's end. The layer is not
    /// compressed. If `dumping` fails, the parts stop and nothing is
    /// tagged (parts already pushed stay in the registry, unreferenced,
    /// for its garbage collection); likewise if a push fails.
    ///
    /// Such an image is for criu-oci's pulls ([`Registry::pull_checkpoint`]):
    /// Podman and checkpointctl expect the whole checkpoint in one layer.
    pub fn push_checkpoint_while<T>(
        &self,
        reference: &str,
        images: &criu::ImagesDir,
        meta: &ArchiveMeta,
        host: &HostFacts,
        dumping: impl FnOnce() -> Result<T>,
    ) -> Result<(T, PushedCheckpoint)> {
        let dumping = |_: &mut dyn FnMut() -> Option<Part>| dumping();
        self.push_checkpoint_announcing(reference, images, meta, host, dumping, &mut |_| Ok(()))
    }

    /// [`Registry::push_checkpoint_while`], calling `announce` on this
    /// thread with each part once the registry acknowledged its blob
    /// (its digest and size are then final), in the order the parts were
    /// cut, before the archive goes up: so that a destination told of
    /// them can fetch them while the rest is pushed. While `dumping`
    /// runs (this thread is in it), it takes the parts acknowledged so
    /// far from the function it is given (`None`: no more for now) and
    /// announces them itself; the rest go to `announce` once it has
    /// returned. If either fails, the push stops, nothing is tagged, and
    /// that error is returned.
    pub(crate) fn push_checkpoint_announcing<T>(
        &self,
        reference: &str,
        images: &criu::ImagesDir,
        meta: &ArchiveMeta,
        host: &HostFacts,
        dumping: impl FnOnce(&mut dyn FnMut() -> Option<Part>) -> Result<T>,
        announce: &mut dyn FnMut(&Part) -> Result<()>,
    ) -> Result<(T, PushedCheckpoint)> {
        let r = parse(reference)?;
        self.runtime.block_on(
            self.client
                .store_auth_if_needed(r.resolve_registry(), &self.auth),
        );
        let ended = AtomicBool::new(false);
        let abandoned = AtomicBool::new(false);
        // The follower reads and hashes each part, the pusher sends them,
        // PARTS_IN_FLIGHT at a time (the queue between them holds one),
        // and hands each acknowledged part back to this thread.
        let (tx, rx) = mpsc::channel::<(Part, bytes::Bytes)>(1);
        let (acked_tx, acked) = std::sync::mpsc::channel::<Part>();
        let dumped = std::thread::scope(|s| {
            let (ended, abandoned) = (&ended, &abandoned);
            // It owns `tx`: its end ends the pusher's queue.
            let follower = s.spawn(move || {
                parts::follow(images.path(), ended, |part, data| {
                    if abandoned.load(Ordering::Acquire) {
                        return Err(Error::Malformed("the dump failed".into()));
                    }
                    tx.blocking_send((part.clone(), data))
                        .map_err(|_| Error::Malformed("the part pusher stopped".into()))
                })
            });
            let pusher = s.spawn(|| self.runtime.block_on(self.push_parts(&r, rx, acked_tx)));
            let dumped = dumping(&mut || acked.try_recv().ok());
            let dump_end = Instant::now();
            abandoned.store(dumped.is_err(), Ordering::Release);
            ended.store(true, Ordering::Release);
            let announced = match dumped.is_ok() {
                true => announce_acked(acked, announce, abandoned),
                false => Ok(()),
            };
            (dumped, announced, follower.join(), pusher.join(), dump_end)
        });
        let (dumped, announced, followed, pushed, start) = dumped;
        let dumped = dumped?;
        // The announcement's failure (the destination gone, say) first:
        // the pusher's is then only that nobody took its parts.
        announced?;
        let panicked = |_| Error::Malformed("the part pusher panicked".into());
        // The pusher's failure next: the follower's is then only that
        // it could not hand it more.
        pushed.map_err(panicked)??;
        let parts = followed.map_err(panicked)??;
        let parts_wait = start.elapsed();
        let archive = Archive {
            images,
            meta,
            host,
            compression: Compression::None,
            parts: &parts,
        };
        let pushed = self.push_archive(&r, &archive, start, &mut |_, _| {})?;
        Ok((
            dumped,
            PushedCheckpoint {
                parts_wait,
                ..pushed
            },
        ))
    }

    /// Pushes the parts from `rx` (each hashed already) as blobs,
    /// [`PARTS_IN_FLIGHT`] at a time, handing each to `acked` once the
    /// registry took it, in the order they came, until `rx` ends or a
    /// push fails or nobody takes the acknowledgements any more (then
    /// `rx` is dropped, which stops the follower).
    async fn push_parts(
        &self,
        r: &Reference,
        rx: mpsc::Receiver<(Part, bytes::Bytes)>,
        acked: std::sync::mpsc::Sender<Part>,
    ) -> Result<()> {
        let parts = futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        });
        let pushes = parts
            .map(|(part, data)| async move {
                self.client
                    .push_blob(r, data, &part.digest)
                    .await
                    .map_err(|e| classify(r, "push (a part of the pages)", e))?;
                Ok::<_, Error>(part)
            })
            // In order: a destination assembles each file front to back.
            .buffered(PARTS_IN_FLIGHT);
        let mut pushes = std::pin::pin!(pushes);
        while let Some(pushed) = pushes.next().await {
            acked
                .send(pushed?)
                .map_err(|_| Error::Malformed("the parts' announcer stopped".into()))?;
        }
        Ok(())
    }

    /// Pushes `a`'s archive as the image's first layer (in one streamed
    /// `PUT` when plain, see [`Registry::push_checkpoint`]), its config,
    /// and the manifest, with `a.parts` (pushed already) as more layers.
    fn push_archive(
        &self,
        r: &Reference,
        a: &Archive<'_>,
        start: Instant,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PushedCheckpoint> {
        let Archive {
            images,
            meta,
            host,
            compression,
            parts,
        } = *a;
        let r = r.clone();
        let mut skip: Vec<String> = parts.iter().map(|p| p.file.clone()).collect();
        skip.dedup();
        let skip = &skip[..];
        // Both passes (see `sized_in_advance`) must write the same bytes.
        let mut meta = meta.clone();
        if meta.checkpointed_time.is_empty() {
            meta.checkpointed_time = archive::rfc3339_now();
        }
        let meta = &meta;
        let sized = sized_in_advance(images, meta, compression, skip)?;
        let (chunks, rx) = Chunks::channel();
        let moved = Arc::new(AtomicU64::new(0));
        let total = sized.as_ref().map(|w| w.tar_bytes);
        let (packed, sent) = std::thread::scope(|s| {
            let packer = s.spawn(move || pack_into(images, meta, compression, skip, chunks));
            let sent = self.runtime.block_on(reporting(
                self.send_layer(&r, rx, &moved, sized.as_ref(), host, parts),
                &moved,
                total,
                progress,
            ));
            (packer.join(), sent)
        });
        let packed = packed.map_err(|_| Error::Malformed("the packing thread panicked".into()))?;
        let ((written, pack), (layer_digest, layer_bytes)) = match (packed, sent) {
            (Ok(p), Ok(l)) => (p, l),
            // Packing failed and said why; the upload was abandoned for it.
            (Err(e), _) if !stopped_by_the_push(&e) => return Err(e),
            (_, Err(e)) => return Err(classify(&r, "push (layer)", e)),
            (Err(e), Ok(_)) => return Err(e),
        };
        if sized.as_ref().is_some_and(|w| w.diff_id != written.diff_id) {
            return Err(Error::Malformed(format!(
                "the images in {} changed while they were pushed; nothing was tagged",
                images.path().display()
            )));
        }
        let config = image_config_with_parts(host, &written.diff_id, parts);
        let mut manifest = checkpoint_manifest(
            &config,
            checkpoint_annotations(meta, host),
            layer_media_type(compression),
            &layer_digest,
            layer_bytes,
        );
        add_parts(&mut manifest, parts);
        self.runtime
            .block_on(async {
                if sized.is_none() {
                    let config_digest = manifest.config.digest.clone();
                    self.client.push_blob(&r, config, &config_digest).await?;
                }
                self.client.push_manifest(&r, &manifest.into()).await
            })
            .map_err(|e| classify(&r, "push (manifest)", e))?;
        Ok(PushedCheckpoint {
            push: Transfer {
                layer_bytes: layer_bytes + parts.iter().map(|p| p.size).sum::<u64>(),
                elapsed: start.elapsed(),
            },
            pack,
            layer_digest,
            parts: parts.len(),
            parts_wait: Duration::ZERO,
        })
    }

    /// Sends the layer from `rx`: with its size and digest known
    /// (`sized`), in one streamed `PUT`, the image config (which `sized`
    /// settles too) going up alongside; else as [`Registry::push_layer`]
    /// does. Returns the layer's digest and size.
    async fn send_layer(
        &self,
        r: &Reference,
        rx: mpsc::Receiver<stream::Item>,
        moved: &Arc<AtomicU64>,
        sized: Option<&archive::Written>,
        host: &HostFacts,
        parts: &[Part],
    ) -> std::result::Result<(String, u64), OciDistributionError> {
        let Some(w) = sized else {
            return self.push_layer(r, rx, moved).await;
        };
        let config = image_config_with_parts(host, &w.diff_id, parts);
        let config_digest = sha256_digest(&config);
        let layer = self.client.push_blob_stream(
            r,
            receiver_stream(rx, moved),
            &w.diff_id,
            Some(w.tar_bytes),
        );
        let config = self.client.push_blob(r, config, &config_digest);
        futures_util::future::try_join(layer, config).await?;
        Ok((w.diff_id.clone(), w.tar_bytes))
    }

    /// Sends the chunks from `rx` as one blob: in one request when there
    /// is only one, else as a chunked upload. Returns its digest and size.
    /// Counts what it hands to the client in `moved`.
    async fn push_layer(
        &self,
        r: &Reference,
        mut rx: mpsc::Receiver<stream::Item>,
        moved: &Arc<AtomicU64>,
    ) -> std::result::Result<(String, u64), OciDistributionError> {
        let first = rx.recv().await.transpose()?;
        let second = rx.recv().await.transpose()?;
        match (first, second) {
            (None, _) => Err(OciDistributionError::PushNoDataError),
            (Some(only), None) => {
                let digest = sha256_digest(&only);
                let len = only.len() as u64;
                self.client.push_blob(r, only, &digest).await?;
                moved.fetch_add(len, Ordering::Relaxed);
                Ok((digest, len))
            }
            (Some(first), Some(second)) => {
                let all = futures_util::stream::iter([Ok(first), Ok(second)])
                    .inspect(move_count(moved.clone()))
                    .chain(receiver_stream(rx, moved));
                let done = self.client.push_blob_stream_chunked(r, all).await?;
                Ok((done.blob_digest, done.size))
            }
        }
    }
}

/// What [`Registry::push_checkpoint`] did.
#[derive(Debug, Clone)]
pub struct PushedCheckpoint {
    /// The whole push (packing included, since it overlaps the upload);
    /// its `layer_bytes` is the layer's size.
    pub push: Transfer,
    /// How long writing the archive took (while the upload ran).
    pub pack: Duration,
    /// The layer's digest (`sha256:...`).
    pub layer_digest: String,
    /// How many part layers carried the pages images (0 unless pushed
    /// with [`Registry::push_checkpoint_while`]).
    pub parts: usize,
    /// Of `push.elapsed`, the wait from the dump's end until the last
    /// part was pushed (zero unless pushed with
    /// [`Registry::push_checkpoint_while`]).
    pub parts_wait: Duration,
}

/// What [`Registry::push_archive`] packs and pushes.
#[derive(Clone, Copy)]
struct Archive<'a> {
    images: &'a criu::ImagesDir,
    meta: &'a ArchiveMeta,
    host: &'a HostFacts,
    compression: Compression,
    /// Pushed already: left out of the archive, listed after it.
    parts: &'a [Part],
}

/// What [`Registry::pull_checkpoint`] did.
#[derive(Debug)]
pub struct PulledCheckpoint {
    /// The unpacked archive.
    pub unpacked: Unpacked,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The pull (manifest and layer, verified), the unpacking overlapping it.
    pub pull: Transfer,
    /// What unpacking took beyond the end of the download.
    pub unpack: Duration,
    /// Of `pull.elapsed`, fetching, checking and writing the pages parts
    /// after the archive (zero without parts).
    pub parts: Duration,
}

/// Parts of a migration image fetched while its source still pushed
/// ([`Registry::prefetch_parts`]): each checked against its digest
/// before it was written into its pages image in `dir`.
#[derive(Debug)]
pub(crate) struct Prefetched {
    /// The directory holding the pages images assembled from the parts.
    pub(crate) dir: std::path::PathBuf,
    /// The parts written, in the order announced.
    pub(crate) parts: Vec<Part>,
    /// When the first of them was asked for (as soon as it was announced).
    pub(crate) first_fetch: Option<Instant>,
    /// When the first of them had been written.
    pub(crate) first_written: Option<Instant>,
}

/// Writes `data`, `part`'s blob already checked against its digest,
/// refused unless it has the size the part announces.
fn write_part(r: &Reference, assembly: &mut Assembly<'_>, part: &Part, data: &[u8]) -> Result<()> {
    if data.len() as u64 != part.size {
        return Err(Error::Malformed(format!(
            "{r}: a part of {} has {} bytes, its manifest says {}",
            part.file,
            data.len(),
            part.size
        )));
    }
    assembly.write(part, data)
}

/// Refuses a manifest whose parts are not exactly the ones the source
/// announced (and the destination fetched) while it pushed.
fn same_parts(reference: &str, listed: &[Part], announced: &[Part]) -> Result<()> {
    if listed == announced {
        return Ok(());
    }
    Err(Error::Malformed(format!(
        "{reference} lists {} pages parts, not the {} the source announced while it pushed \
         (or not the same ones): the image changed in the registry, or the source pushed \
         another; nothing of it was restored",
        listed.len(),
        announced.len()
    )))
}

/// Links the pages images assembled from `p`'s parts into the unpacked
/// checkpoint directory, none of them over a file the archive brought.
fn place_prefetched(p: &Prefetched, unpacked: &Unpacked) -> Result<()> {
    let dir = unpacked.root.join(archive::CHECKPOINT_DIR);
    let files: std::collections::BTreeSet<&str> = p.parts.iter().map(|p| p.file.as_str()).collect();
    for file in files {
        let (from, to) = (p.dir.join(file), dir.join(file));
        // A hard link never replaces what is there (a link of the
        // archive's, say): that is refused.
        std::fs::hard_link(&from, &to).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                Error::Malformed(format!("{file} is both in the archive and in parts"))
            }
            _ => Error::io(
                format!(
                    "linking {} into {} (the parts' directory and the unpacked archive must \
                     share a filesystem)",
                    from.display(),
                    dir.display()
                ),
                e,
            ),
        })?;
    }
    Ok(())
}

/// Whether packing failed only because the push stopped reading.
fn stopped_by_the_push(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The chunks from `rx`, as the stream a push sends, counted into
/// `moved` as the client takes them.
fn receiver_stream(
    rx: mpsc::Receiver<stream::Item>,
    moved: &Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = stream::Item> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    })
    .inspect(move_count(moved.clone()))
}

/// Adds each chunk's length to `moved`.
fn move_count(moved: Arc<AtomicU64>) -> impl FnMut(&stream::Item) {
    move |item| {
        if let Ok(chunk) = item {
            moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
}

/// How many parts of a migration image's pages a push sends at once:
/// the registry hashes what it receives, on a core of its own for each
/// (distribution 2.8, built with Go 1.19, takes about 220 MB/s per
/// upload here, bound by its SHA-256), and this machine has two.
const PARTS_IN_FLIGHT: usize = 2;

/// How many parts a pull fetches at once: a part is written while the
/// others keep downloading (each is held in memory until checked).
const PULL_PARTS_IN_FLIGHT: usize = 4;

/// Announces each part the pusher acknowledges through `announce`,
/// until the pusher ends. If `announce` fails, the follower is told to
/// stop (`abandoned`) and the receiver dropped, which stops the pusher
/// at its next acknowledgement.
fn announce_acked(
    acked: std::sync::mpsc::Receiver<Part>,
    announce: &mut dyn FnMut(&Part) -> Result<()>,
    abandoned: &AtomicBool,
) -> Result<()> {
    for part in acked {
        if let Err(e) = announce(&part) {
            abandoned.store(true, Ordering::Release);
            return Err(e);
        }
    }
    Ok(())
}

/// A transfer's progress callback, as the methods take it.
type ProgressFn<'p> = &'p mut dyn FnMut(u64, Option<u64>);

/// How often, at most, a transfer's progress callback is called while
/// bytes move (plus once at the end).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Runs `fut`, calling `progress` with `moved` (and `total`) every
/// [`PROGRESS_EVERY`] if it changed, and when `fut` ends if it changed
/// since it was last told (so the final count is always told, once).
async fn reporting<F: std::future::Future>(
    fut: F,
    moved: &AtomicU64,
    total: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut told = None;
    let mut report = |progress: &mut dyn FnMut(u64, Option<u64>)| {
        let now = moved.load(Ordering::Relaxed);
        if told != Some(now) {
            told = Some(now);
            progress(now, total);
        }
    };
    loop {
        let tick = std::pin::pin!(tokio::time::sleep(PROGRESS_EVERY));
        match futures_util::future::select(fut.as_mut(), tick).await {
            futures_util::future::Either::Left((out, _)) => {
                report(progress);
                return out;
            }
            futures_util::future::Either::Right(_) => report(progress),
        }
    }
}

/// A plain archive's size and digest, from a first pass that writes it
/// nowhere (reading the images from the page cache, where CRIU just
/// wrote them, and hashing them): with both known, the layer goes up in
/// one streamed `PUT`. oci-client's other streamed push, which computes
/// the digest as it goes, sends one `PATCH` per 4 MiB chunk, and each is
/// a round of file work in the registry (seen here: a 128 MiB push took
/// 2.3 s chunked against 1.8 s from memory). A gzip layer's digest would
/// need the compression twice: it goes chunked (`None` here).
fn sized_in_advance(
    images: &criu::ImagesDir,
    meta: &ArchiveMeta,
    compression: Compression,
    skip: &[String],
) -> Result<Option<archive::Written>> {
    match compression {
        Compression::None => Ok(Some(archive::write_skipping(
            images,
            meta,
            std::io::sink(),
            Compression::None,
            skip,
        )?)),
        Compression::Gzip => Ok(None),
    }
}

/// The unpacking thread: unpacks what arrives, then, if the archive was
/// taken, reads the rest (the tar's end padding) so that the pull hashes
/// the whole layer; after a refusal it stops reading, which cuts the
/// download short. Returns when it finished.
fn unpack_all(mut pieces: Pieces, target: &Path, limits: &Limits) -> (Result<Unpacked>, Instant) {
    let unpacked = archive::unpack(&mut pieces, target, limits);
    if unpacked.is_ok() {
        let _ = std::io::copy(&mut pieces, &mut std::io::sink());
    }
    (unpacked, Instant::now())
}

/// The largest image config fetched (criu-oci reads only its architecture).
const CONFIG_MAX: u64 = 1 << 20;

/// The layer's size from its descriptor, refused if beyond `limits`.
fn layer_size(reference: &str, layer: &OciDescriptor, limits: &Limits) -> Result<u64> {
    let size = u64::try_from(layer.size).map_err(|_| {
        Error::Malformed(format!(
            "{reference}: the layer's size {} is negative",
            layer.size
        ))
    })?;
    if size > limits.layer_bytes {
        return Err(Error::TooLarge {
            what: format!("{reference}'s layer ({size} bytes, as its manifest says)"),
            limit: limits.layer_bytes,
        });
    }
    Ok(size)
}

/// The entry of an image index for `host` (linux and its architecture),
/// or its only entry if that names no platform.
fn index_entry<'i>(
    reference: &str,
    index: &'i OciImageIndex,
    host: &HostFacts,
) -> Result<&'i ImageIndexEntry> {
    let fits = |e: &&ImageIndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.architecture.to_string() == host.arch && p.os.to_string() == "linux")
    };
    if let Some(e) = index.manifests.iter().find(fits) {
        return Ok(e);
    }
    match index.manifests.as_slice() {
        [only] if only.platform.is_none() => Ok(only),
        entries => Err(Error::Incompatible {
            reference: reference.into(),
            reason: format!(
                "its image index has no entry for linux/{} (it has {:?}); pull the platform's own manifest by digest",
                host.arch,
                entries
                    .iter()
                    .map(|e| e.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                    .collect::<Vec<_>>()
            ),
        }),
    }
}

/// Whether the pull failed only because the unpacker stopped reading.
fn stopped_reading(e: &OciDistributionError) -> bool {
    let text = e.to_string();
    text.contains("the unpacker stopped reading")
        || matches!(e, OciDistributionError::IoError(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The packing thread: writes the archive into `chunks` and ends the
/// stream, or ends it with the reason packing failed.
fn pack_into(
    images: &criu::ImagesDir,
    meta: &ArchiveMeta,
    compression: Compression,
    skip: &[String],
    mut chunks: Chunks,
) -> Result<(archive::Written, Duration)> {
    let t = Instant::now();
    match archive::write_skipping(images, meta, &mut chunks, compression, skip) {
        Ok(written) => {
            chunks
                .finish()
                .map_err(|e| Error::io("sending the archive's last chunk", e))?;
            Ok((written, t.elapsed()))
        }
        Err(e) => {
            chunks.fail(e.to_string());
            Err(e)
        }
    }
}

fn parse(reference: &str) -> Result<Reference> {
    reference.parse().map_err(|e| Error::Registry {
        what: format!("parsing {reference:?}"),
        message: format!("{e}"),
    })
}

fn is_not_found(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode as C;
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .all(|e| matches!(e.code, C::ManifestUnknown | C::NameUnknown | C::NotFound)),
        _ => false,
    }
}

/// Sorts the client's errors into the ones callers act on differently.
fn classify(r: &Reference, what: &str, e: OciDistributionError) -> Error {
    let registry = r.resolve_registry().to_string();
    let message = e.to_string();
    match e {
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Error::Digest {
            what: format!("a blob of {r}"),
            expected,
            actual,
        },
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::ServerError { code: 401, .. } => {
            Error::AuthRefused { registry, message }
        }
        OciDistributionError::RequestError(ref re) if is_tls_failure(re) => Error::Tls {
            registry,
            message: error_chain(re),
        },
        OciDistributionError::RequestError(ref re) if re.is_connect() || re.is_timeout() => {
            Error::Unreachable {
                registry,
                message: error_chain(re),
            }
        }
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized)) =>
        {
            Error::AuthRefused { registry, message }
        }
        _ => Error::Registry {
            what: format!("{what} of {r}"),
            message,
        },
    }
}

/// An error of a blob stream: a digest that did not match (which the
/// stream reports inside an I/O error at its end) as [`Error::Digest`],
/// anything else as the download's failure.
fn classify_stream(r: &Reference, what: &str, e: std::io::Error) -> Error {
    let digest = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>());
    match digest {
        Some(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            Error::Digest {
                what: format!("a blob of {r}"),
                expected: expected.clone(),
                actual: actual.clone(),
            }
        }
        _ => classify(r, what, OciDistributionError::IoError(e)),
    }
}

/// Whether a request failed in the TLS handshake: rustls's errors are
/// reached only as the source chain's text, so the text decides.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let chain = error_chain(e).to_lowercase();
    e.is_connect()
        && [
            "certificate",
            "tls handshake",
            "handshake failure",
            "invalidcontenttype",
        ]
        .iter()
        .any(|k| chain.contains(k))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
