//! The registry route as a migration strategy of criu-rs's
//! ([`criu::migrate::strategy`]): the source dumps with its tree held,
//! pushes the checkpoint as an OCI image (a plain layer's pages going up
//! in parts while CRIU writes them, see [`crate::parts`]; the rest once
//! the dump is over) and tells the destination, over the migration's
//! stream, first the reference it pushes to, then each part once the
//! registry acknowledged it, then the reference and layer it pushed. The
//! destination fetches each announced part at once, while the rest is
//! still pushed (a part is written only once its whole blob matched its
//! digest), then pulls the image (every blob checked against its
//! digest, the annotations against this host, the parts against those
//! announced, the layer's size against the source's word), restores it,
//! and only on its confirmation is the source copy killed. If anything
//! fails before that (the registry unreachable, a part refused, the
//! stream cut) the source resumes where it was and the destination
//! removes what it fetched.
//!
//! ```no_run
//! use criu::migrate::{receive_with, send_with, DestConfig, SourceConfig, Strategy};
//! use criu_oci::strategy::{PullFrom, PushTo};
//! use criu_oci::{Compression, Limits, Registry, RegistryConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new(&RegistryConfig::default())?;
//! let criu = criu::Criu::new();
//! // Node A, with a stream to node B:
//! # let mut stream = std::net::TcpStream::connect("10.0.0.2:7000")?;
//! let mut push = PushTo::new(&registry, "registry.local:5000/moves/counter:1", "counter")
//!     .compression(Compression::None);
//! let sent = send_with(&criu, 4242, &mut stream, SourceConfig::new(Strategy::StopAndCopy), &mut push)?;
//! // Node B, with the other end of the stream:
//! let mut pull = PullFrom::new(&registry, "registry.local:5000/moves/", Limits::default());
//! let received = receive_with(&criu, &mut stream, DestConfig::new(), &mut pull)?;
//! # drop((sent, received)); Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use criu::migrate::strategy::{
    Dest, DestStrategy, DumpPlan, Received, Restored, Running, Source, SourceStrategy,
};
use criu::{MigrationError, SourceState, Step};
use serde::{Deserialize, Serialize};

use crate::annotations::HostFacts;
use crate::archive::{ArchiveMeta, Compression, Limits};
use crate::parts::Part;
use crate::registry::{Prefetched, Registry};

/// The strategy's name, in the migration's hello.
pub const NAME: &str = "registry";

/// How often the source looks for parts to announce while the dump runs.
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// The strategy's own messages, from the source, in this order:
/// `Pushing` once, `Part` for each pages part in the registry, `Pushed`
/// last. A destination refuses any other order (and a source of an
/// older build, which sends `Pushed` alone, is pulled as before).
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// The checkpoint image goes to `reference`: checked against the
    /// destination's prefix before anything is fetched.
    Pushing { reference: String },
    /// A part of the pages is in `reference`'s repository, its blob
    /// acknowledged by the registry: the destination may fetch it while
    /// the rest is pushed.
    Part(Part),
    /// The checkpoint image was pushed as `reference`; its layer is
    /// `layer_bytes` long, of digest `layer_digest`.
    Pushed {
        reference: String,
        layer_digest: String,
        layer_bytes: u64,
    },
}

/// The source side: dumps the tree (held), pushes it to a registry as a
/// checkpoint image, and tells the destination where.
#[derive(Debug)]
pub struct PushTo<'r> {
    registry: &'r Registry,
    reference: String,
    name: String,
    compression: Compression,
    pushed: Option<crate::registry::PushedCheckpoint>,
    push_ended: Option<Instant>,
}

impl<'r> PushTo<'r> {
    /// Pushes to `reference` (`host:port/repo:tag`) through `registry`,
    /// naming the checkpoint `name` in its annotations; the layer is not
    /// compressed unless [`PushTo::compression`] says so (gzip's time
    /// would be downtime).
    pub fn new(registry: &'r Registry, reference: &str, name: &str) -> PushTo<'r> {
        PushTo {
            registry,
            reference: reference.to_string(),
            name: name.to_string(),
            compression: Compression::None,
            pushed: None,
            push_ended: None,
        }
    }

    /// The layer's compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// What the push did, once the migration pushed.
    pub fn pushed(&self) -> Option<&crate::registry::PushedCheckpoint> {
        self.pushed.as_ref()
    }

    /// When the push ended (the manifest in the registry), once the
    /// migration pushed: beside [`Pulled::first_part_fetched`], it shows
    /// whether the destination's pull overlapped the push.
    pub fn push_ended(&self) -> Option<Instant> {
        self.push_ended
    }
}

impl SourceStrategy for PushTo<'_> {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&mut self, source: &mut Source<'_>) -> criu::Result<Restored> {
        let meta = ArchiveMeta::of_process(source.pid(), &self.name);
        let host = HostFacts::current(source.criu()).map_err(|e| {
            typed(
                e,
                Step::Handshake,
                SourceState::Untouched,
                "reading this host's facts for the checkpoint's annotations",
            )
        })?;
        source.send(&Own::Pushing {
            reference: self.reference.clone(),
        })?;
        let dump = source.dump(DumpPlan::new())?;
        let failed = |e| {
            typed(
                e,
                Step::Transfer,
                SourceState::Resumed,
                &format!("pushing the checkpoint to {}", self.reference),
            )
        };
        let (images, pushed) = match self.compression {
            // The pages go up while CRIU writes them, each part announced
            // to the destination once the registry has it.
            Compression::None => {
                let dir = dump.dir();
                let source = std::cell::RefCell::new(&mut *source);
                self.registry
                    .push_checkpoint_announcing(
                        &self.reference,
                        dir,
                        &meta,
                        &host,
                        |acked| {
                            // Announced while CRIU still writes the rest.
                            let announce_acked = |s: &mut Source<'_>| {
                                while let Some(part) = acked() {
                                    s.send(&Own::Part(part))?;
                                }
                                Ok(())
                            };
                            let mut source = source.borrow_mut();
                            Ok(source.images_ready_meanwhile(
                                dump,
                                ANNOUNCE_EVERY,
                                announce_acked,
                            )?)
                        },
                        &mut |part| {
                            // The rest of the parts, the dump over.
                            let mut source = source.borrow_mut();
                            unless_cancelled(&source)?;
                            Ok(source.send(&Own::Part(part.clone()))?)
                        },
                    )
                    .map_err(failed)?
            }
            _ => {
                let images = source.images_ready(dump)?;
                let pushed = self
                    .registry
                    .push_checkpoint(
                        &self.reference,
                        images.dir(),
                        &meta,
                        &host,
                        self.compression,
                    )
                    .map_err(failed)?;
                (images, pushed)
            }
        };
        self.push_ended = Some(Instant::now());
        source.step(Step::Transfer);
        // Cancelled while the rest went up: the destination is never told
        // to pull (nor restores a copy only to have it killed).
        unless_cancelled(source)?;
        source.send(&Own::Pushed {
            reference: self.reference.clone(),
            layer_digest: pushed.layer_digest.clone(),
            layer_bytes: pushed.push.layer_bytes,
        })?;
        let bytes = pushed.push.layer_bytes;
        self.pushed = Some(pushed);
        let restored = source.await_restore(images)?;
        Ok(restored.carried_beside(bytes))
    }
}

/// `Err` (cancelled, the source to be resumed) once the migration was
/// cancelled. A cancel while CRIU dumps refuses the dump at its next
/// notification; once the dump is over, the push checks here, between
/// the parts left and before the destination is told to pull: without
/// it, the source heard of its cancellation only in
/// [`Source::await_restore`], after the destination had restored a copy
/// (killed then).
fn unless_cancelled(source: &Source<'_>) -> criu::Result<()> {
    if !source.cancel().is_cancelled() {
        return Ok(());
    }
    Err(criu::Error::migration(
        MigrationError::new(
            Step::Transfer,
            SourceState::Resumed,
            "stopped on request while the checkpoint was pushed",
        )
        .cancelled(),
        None,
    ))
}

/// What the destination pulled.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference the source pushed.
    pub reference: String,
    /// The layer's digest, as the source pushed it.
    pub layer_digest: String,
    /// The pull.
    pub pull: crate::registry::Transfer,
    /// Of `pull.elapsed`, placing the pages parts (linking the ones
    /// fetched early, or fetching them now).
    pub parts: std::time::Duration,
    /// What unpacking the archive took beyond the end of its download.
    pub unpack: std::time::Duration,
    /// How many pages parts were fetched while the source still pushed
    /// (as it announced them), of the image's parts.
    pub parts_prefetched: usize,
    /// When the first of them was asked for (as soon as the source
    /// announced it): before [`PushTo::push_ended`] when the pull
    /// overlapped the push.
    pub first_part_fetched: Option<Instant>,
    /// When the first of them had been fetched, checked and written.
    pub first_part_written: Option<Instant>,
}

/// The destination side: pulls what the source pushed (from one
/// repository prefix only), checks it, and restores it.
#[derive(Debug)]
pub struct PullFrom<'r> {
    registry: &'r Registry,
    prefix: String,
    limits: Limits,
    pulled: Option<Pulled>,
}

impl<'r> PullFrom<'r> {
    /// Pulls through `registry` references that start with `prefix`
    /// (`host:port/repo/`, say: a source cannot send this host elsewhere),
    /// unpacking within `limits`.
    pub fn new(registry: &'r Registry, prefix: &str, limits: Limits) -> PullFrom<'r> {
        PullFrom {
            registry,
            prefix: prefix.to_string(),
            limits,
            pulled: None,
        }
    }

    /// What was pulled, once the migration pulled.
    pub fn pulled(&self) -> Option<&Pulled> {
        self.pulled.as_ref()
    }
}

impl DestStrategy for PullFrom<'_> {
    fn name(&self) -> &str {
        NAME
    }

    fn run(&mut self, dest: &mut Dest<'_>) -> criu::Result<Running> {
        let (pushed, prefetched) = match dest.recv()? {
            // A source that announces no parts.
            pushed @ Own::Pushed { .. } => (pushed, None),
            Own::Pushing { reference } => {
                self.check_reference(&reference)?;
                let (pushed, prefetched) = self.fetch_announced(dest, &reference)?;
                (pushed, Some(prefetched))
            }
            Own::Part(_) => {
                return Err(refused(
                    "the source announced a part before the image's reference: refused (a \
                     source of another build of criu-oci?)"
                        .into(),
                ))
            }
        };
        let Own::Pushed {
            reference,
            layer_digest,
            layer_bytes,
        } = pushed
        else {
            return Err(refused("the source's last message was not `Pushed`".into()));
        };
        self.check_reference(&reference)?;
        let host = HostFacts::current(dest.criu()).map_err(|e| {
            typed(
                e,
                Step::Transfer,
                SourceState::Unknown,
                "reading this host's facts",
            )
        })?;
        let target = fresh(dest.work_dir(), "archive")?;
        // Removed if the migration fails from here on.
        dest.created(&target);
        dest.created(&criu_work_path(&target));
        let pulled = self
            .registry
            .pull_checkpoint_prefetched(
                &reference,
                &host,
                &target,
                &self.limits,
                &mut |_, _| {},
                prefetched.as_ref(),
            )
            .map_err(|e| {
                typed(
                    e,
                    Step::Transfer,
                    SourceState::Unknown,
                    &format!("pulling {reference}"),
                )
            });
        // The parts are linked into the unpacked images, or refused.
        if let Some(p) = &prefetched {
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        let pulled = pulled?;
        if pulled.pull.layer_bytes != layer_bytes {
            return Err(refused(format!(
                "{reference} holds a layer of {} bytes, and the source pushed {layer_bytes} \
                 ({layer_digest}): the image changed in the registry",
                pulled.pull.layer_bytes
            )));
        }
        let step = |e| {
            typed(
                e,
                Step::Restore,
                SourceState::Unknown,
                "opening the pulled images",
            )
        };
        let images = pulled.unpacked.images().map_err(step)?;
        // CRIU's log goes beside the unpacked tree, never into it.
        let work = pulled.unpacked.criu_work_dir().map_err(step)?;
        let mut transfer = criu::transfer::TransferStats::default();
        transfer.bytes = pulled.pull.layer_bytes;
        transfer.elapsed = pulled.pull.elapsed;
        self.pulled = Some(Pulled {
            reference,
            layer_digest,
            pull: pulled.pull,
            parts: pulled.parts,
            unpack: pulled.unpack,
            parts_prefetched: prefetched.as_ref().map_or(0, |p| p.parts.len()),
            first_part_fetched: prefetched.as_ref().and_then(|p| p.first_fetch),
            first_part_written: prefetched.and_then(|p| p.first_written),
        });
        let received = Received::new(images, transfer).criu_work_dir(work);
        dest.restore(received, |_| {})
    }
}

impl PullFrom<'_> {
    /// Refuses a reference outside this host's prefix.
    fn check_reference(&self, reference: &str) -> criu::Result<()> {
        if !reference.starts_with(&self.prefix) || reference.contains("..") {
            return Err(refused(format!(
                "the source pushed {reference}, outside {}: refused (PullFrom::new names the \
                 repositories this host pulls from)",
                self.prefix
            )));
        }
        Ok(())
    }

    /// Receives the source's announcements until its `Pushed`, fetching
    /// each announced part from `reference`'s repository meanwhile (on a
    /// thread of its own, into a directory removed if the migration
    /// fails). Returns the `Pushed` and what was fetched.
    fn fetch_announced(
        &self,
        dest: &mut Dest<'_>,
        reference: &str,
    ) -> criu::Result<(Own, Prefetched)> {
        let dir = fresh(dest.work_dir(), "parts")?;
        dest.created(&dir);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Dropped unsent, it stops the fetches at once.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (received, fetched) = std::thread::scope(|s| {
            let fetcher = s.spawn(|| {
                self.registry
                    .prefetch_parts(reference, rx, stopped, &dir, &self.limits)
            });
            let received = receive_announcements(dest, reference, tx);
            let stop = received.as_ref().ok().map(|_| stop);
            let fetched = fetcher.join();
            drop(stop);
            (received, fetched)
        });
        let fetched = fetched
            .map_err(|_| refused("the thread fetching announced parts panicked".into()))?
            .map_err(|e| {
                typed(
                    e,
                    Step::Transfer,
                    SourceState::Unknown,
                    &format!("fetching the parts of {reference} the source announced"),
                )
            });
        // The stream's failure (the source's, say) is the one that counts:
        // the fetches were stopped for it.
        let pushed = received?;
        match pushed {
            Some(pushed) => Ok((pushed, fetched?)),
            // The fetcher stopped taking parts: its failure says why.
            None => Err(fetched.err().unwrap_or_else(|| {
                refused("the fetching of announced parts stopped early".into())
            })),
        }
    }
}

/// Hands each part the source announces to the fetcher until the
/// source's `Pushed` (returned), or `None` once the fetcher stopped
/// taking them (it failed, and says why). Anything out of order is
/// refused.
fn receive_announcements(
    dest: &mut Dest<'_>,
    reference: &str,
    parts: tokio::sync::mpsc::UnboundedSender<Part>,
) -> criu::Result<Option<Own>> {
    loop {
        match dest.recv()? {
            Own::Part(part) => {
                if parts.send(part).is_err() {
                    return Ok(None);
                }
            }
            pushed @ Own::Pushed { .. } => {
                if let Own::Pushed { reference: r, .. } = &pushed {
                    if r != reference {
                        return Err(refused(format!(
                            "the source announced {reference} and then pushed {r}: refused"
                        )));
                    }
                }
                return Ok(Some(pushed));
            }
            Own::Pushing { .. } => {
                return Err(refused(
                    "the source announced its image's reference twice: refused".into(),
                ))
            }
        }
    }
}

/// `dir/name`, which must not exist yet (it will be removed on failure,
/// so it must be this migration's own).
fn fresh(dir: &Path, name: &str) -> criu::Result<PathBuf> {
    let path = dir.join(name);
    if path.exists() {
        return Err(refused(format!(
            "{} exists already; the registry strategy unpacks into a path of its own (choose \
             another DestConfig::work_dir)",
            path.display()
        )));
    }
    Ok(path)
}

/// Where `Unpacked::criu_work_dir` puts CRIU's work directory for an
/// archive unpacked at `target`.
fn criu_work_path(target: &Path) -> PathBuf {
    let mut path = target.as_os_str().to_owned();
    path.push(".criu-work");
    path.into()
}

/// A criu-oci error as a migration error at `step` with the source in
/// `state` (a criu-rs error inside it stays what it is).
fn typed(e: crate::Error, step: Step, state: SourceState, what: &str) -> criu::Error {
    let cause = match e {
        crate::Error::Criu(c) if c.migration_error().is_some() => return c,
        crate::Error::Criu(c) => c,
        other => criu::Error::io(what, std::io::Error::other(other)),
    };
    let resumed = match state {
        SourceState::Untouched => "; the source process was not touched",
        SourceState::Resumed => "; the source process was resumed",
        _ => "",
    };
    criu::Error::migration(
        MigrationError::new(step, state, format!("{what} failed{resumed}")),
        Some(cause),
    )
}

/// The destination's refusal of what the source sent.
fn refused(message: String) -> criu::Error {
    criu::Error::migration(
        MigrationError::new(Step::Transfer, SourceState::Unknown, message),
        None,
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use criu::migrate::strategy::{Restored, Source, SourceStrategy};
    use criu::migrate::{receive_with, send_with, DestConfig, SourceConfig, Strategy};

    use super::{Own, Part, PullFrom};
    use crate::{Limits, Registry, RegistryConfig};

    /// A source of the registry strategy's name that sends `messages`
    /// and never dumps: then waits for the destination's verdict.
    struct Rogue(Vec<Own>);

    impl SourceStrategy for Rogue {
        fn name(&self) -> &str {
            super::NAME
        }

        fn run(&mut self, source: &mut Source<'_>) -> criu::Result<Restored> {
            for m in self.0.drain(..) {
                source.send(&m)?;
            }
            let reply: Own = source.recv()?;
            panic!("the destination answered {reply:?}");
        }
    }

    const PREFIX: &str = "127.0.0.1:9/moves/";

    fn part() -> Own {
        Own::Part(Part {
            file: "pages-1.img".into(),
            offset: 0,
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 4096,
        })
    }

    fn pushing(reference: &str) -> Own {
        Own::Pushing {
            reference: reference.into(),
        }
    }

    /// Runs `messages` against a destination that pulls from [`PREFIX`]
    /// (where no registry listens): the destination's error, and what it
    /// left in its work directory.
    fn refused_by_the_destination(messages: Vec<Own>) -> (String, usize) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(&RegistryConfig {
            plain_http: true,
            timeout: Some(Duration::from_secs(2)),
            ..RegistryConfig::default()
        })
        .unwrap();
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (work, src) = (dir.path().join("dst"), dir.path().join("src"));
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&src).unwrap();
        let dst = std::thread::scope(|s| {
            let dst = s.spawn(|| {
                let mut pull = PullFrom::new(&registry, PREFIX, Limits::default());
                let cfg = DestConfig::new()
                    .work_dir(&work)
                    .deadline(Duration::from_secs(20));
                receive_with(&criu::Criu::new(), &mut b, cfg, &mut pull)
            });
            let cfg = SourceConfig::new(Strategy::StopAndCopy).work_dir(&src);
            let pid = std::process::id() as i32;
            let src = send_with(&criu::Criu::new(), pid, &mut a, cfg, &mut Rogue(messages));
            assert!(src.is_err(), "the source hears of the refusal");
            dst.join().unwrap()
        });
        let e = dst.expect_err("refused");
        let left = std::fs::read_dir(&work).unwrap().count();
        (format!("{e}: {:?}", std::error::Error::source(&e)), left)
    }

    #[test]
    fn a_destination_refuses_announcements_out_of_order_and_leaves_nothing() {
        let ours = format!("{PREFIX}counter:1");
        let cases = [
            (vec![part()], "before the image's reference"),
            (vec![pushing("elsewhere:5000/x:1")], "outside"),
            (vec![pushing(&ours), pushing(&ours)], "twice"),
            (
                vec![
                    pushing(&ours),
                    Own::Pushed {
                        reference: format!("{PREFIX}other:1"),
                        layer_digest: String::new(),
                        layer_bytes: 0,
                    },
                ],
                "and then pushed",
            ),
        ];
        for (messages, why) in cases {
            let (e, left) = refused_by_the_destination(messages);
            assert!(e.contains(why), "{why:?} in {e}");
            assert_eq!(left, 0, "nothing left on the destination ({why})");
        }
    }
}
