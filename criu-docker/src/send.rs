//! The source side of a move.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criu::transfer::{recv_message, send_dir, send_message, write_header, Transport};

use crate::checkpoint::{self, Made};
use crate::client::DockerClient;
use crate::error::{Error, Result, SourceState};
use crate::image;
use crate::preflight;
use crate::report::SendReport;
use crate::spec::ContainerSpec;
use crate::wire::{FromDest, FromSource};
use bollard::models::{RestartPolicy, RestartPolicyNameEnum};

/// How the source moves its container.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SendConfig {
    /// The checkpoint's name on both hosts (default: unique per move).
    pub checkpoint_name: String,
    /// Keep the source container, stopped with its checkpoint, once the
    /// destination runs it (default: remove it).
    pub keep_source: bool,
    /// How long to wait for the destination's answers (default 300 s:
    /// its restore of a large container is one answer).
    pub timeout: Duration,
    /// A registry both daemons reach, `HOST[:PORT][/PATH][:TAG]`, through
    /// which the image goes when the destination lacks it (pushed here
    /// and pulled there in the pre-flight, before anything stops).
    /// Without one, a destination without the image refuses the move.
    pub registry: Option<String>,
}

impl Default for SendConfig {
    fn default() -> SendConfig {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        SendConfig {
            checkpoint_name: format!("criu-docker-{}-{}", std::process::id(), now.as_millis()),
            keep_source: false,
            timeout: Duration::from_secs(300),
            registry: None,
        }
    }
}

impl SendConfig {
    /// The defaults.
    pub fn new() -> SendConfig {
        SendConfig::default()
    }

    /// Names the checkpoint.
    pub fn checkpoint_name(mut self, name: impl Into<String>) -> SendConfig {
        self.checkpoint_name = name.into();
        self
    }

    /// Keeps the source container (stopped) after the move.
    pub fn keep_source(mut self, keep: bool) -> SendConfig {
        self.keep_source = keep;
        self
    }

    /// Names the registry through which the image goes when the
    /// destination lacks it ([`SendConfig::registry`]).
    pub fn registry(mut self, registry: impl Into<String>) -> SendConfig {
        self.registry = Some(registry.into());
        self
    }

    /// Bounds each wait for the destination.
    pub fn timeout(mut self, t: Duration) -> SendConfig {
        self.timeout = t;
        self
    }
}

fn expect(got: FromDest, what: &str) -> Error {
    Error::Protocol(format!("expected {what} from the destination, got {got:?}"))
}

/// The source container, once checkpointed: what a failure must undo.
struct Stopped<'a> {
    docker: &'a DockerClient,
    id: String,
    name: String,
    dir: PathBuf,
    policy: Option<RestartPolicy>,
}

/// Docker 20.10 applies a container's restart policy when a checkpoint
/// stops it: an `always` or `unless-stopped` container would start again
/// at once, from scratch, beside its moved copy. The policy is set to
/// `no` before the checkpoint, and given back only if the container runs
/// here again. (A source kept with [`SendConfig::keep_source`] keeps `no`,
/// so that no daemon restart runs it beside its moved copy.)
fn suspend_restart_policy(
    docker: &DockerClient,
    spec: &ContainerSpec,
) -> Result<Option<RestartPolicy>> {
    let Some(policy) = spec.restart_policy() else {
        return Ok(None);
    };
    let no = RestartPolicy {
        name: Some(RestartPolicyNameEnum::NO),
        maximum_retry_count: None,
    };
    docker.set_restart_policy(&spec.id, no)?;
    Ok(Some(policy))
}

impl Stopped<'_> {
    /// Starts the container again from its checkpoint, with its restart
    /// policy; `state` is what to report if that works.
    fn restart(&self, cause: Error, state: SourceState) -> Error {
        let state = match checkpoint::restart(self.docker, &self.id, &self.name) {
            Ok(()) => {
                if let Some(p) = &self.policy {
                    let _ = self.docker.set_restart_policy(&self.id, p.clone());
                }
                state
            }
            Err(_) => SourceState::Stopped {
                checkpoint: self.dir.clone(),
            },
        };
        Error::Moving {
            cause: Box::new(cause),
            source_state: state,
        }
    }
}

fn running(cause: Error) -> Error {
    Error::Moving {
        cause: Box::new(cause),
        source_state: SourceState::Running,
    }
}

/// Moves the running container `container` (name or ID) of `docker` to
/// the destination at the other end of `stream`, where [`crate::receive`]
/// runs.
///
/// Nothing stops before both sides' pre-flights pass and the destination
/// has created the container. The checkpoint stops the container; if
/// anything fails afterwards, before the destination confirms that its
/// copy runs, the container is started again here from that checkpoint
/// and goes on where it stopped. Every error of this call says where the
/// source container is ([`Error::source_state`]).
pub fn send<S: Transport + ?Sized>(
    docker: &DockerClient,
    container: &str,
    stream: &mut S,
    config: &SendConfig,
) -> Result<SendReport> {
    let start = Instant::now();
    stream
        .prepare(Some(config.timeout))
        .map_err(Error::io("setting the stream's timeouts"))
        .map_err(running)?;
    let mut stream = stream;
    write_header(&mut stream).map_err(|e| running(e.into()))?;
    let (spec, data_root) = match preflight::source(docker, container) {
        Ok(found) => found,
        Err(e) => {
            let _ = send_message(
                &mut stream,
                &FromSource::Abort {
                    reason: e.to_string(),
                },
            );
            return Err(running(e));
        }
    };
    if let Some(registry) = &config.registry {
        if let Err(e) = image::target(registry, &spec.image) {
            let _ = send_message(
                &mut stream,
                &FromSource::Abort {
                    reason: e.to_string(),
                },
            );
            return Err(running(e));
        }
    }
    let name = config.checkpoint_name.clone();
    let offer = FromSource::Offer {
        spec: Box::new(spec.clone()),
        checkpoint: name.clone(),
        registry: config.registry.is_some(),
    };
    send_message(&mut stream, &offer).map_err(|e| running(e.into()))?;
    let (dest_name, dest_id, image_push) =
        accepted(docker, &mut stream, &spec, config).map_err(running)?;
    let policy = match suspend_restart_policy(docker, &spec) {
        Ok(p) => p,
        Err(e) => {
            let _ = send_message(
                &mut stream,
                &FromSource::Abort {
                    reason: e.to_string(),
                },
            );
            return Err(running(e));
        }
    };
    let preflight = start.elapsed();
    let stop = Instant::now();
    let made = match checkpoint::create(docker, &data_root, &spec.id, &name) {
        Ok(made) => made,
        Err(e) => {
            let e = failed_checkpoint(docker, &mut stream, &spec.id, &data_root, &name, e);
            if let (Some(p), Some(SourceState::Running)) = (&policy, e.source_state()) {
                let _ = docker.set_restart_policy(&spec.id, p.clone());
            }
            return Err(e);
        }
    };
    let stopped = Stopped {
        docker,
        id: spec.id.clone(),
        name: name.clone(),
        dir: made.dir.clone(),
        policy,
    };
    let (transfer, restore, restore_time_us) = match carry(&mut stream, &made) {
        Ok(done) => done,
        Err(e) => return Err(stopped.restart(e, SourceState::Running)),
    };
    let downtime = stop.elapsed();
    // The destination runs the container: tell it, and hear that it keeps it.
    let kept = send_message(&mut stream, &FromSource::Done)
        .and_then(|()| recv_message::<FromDest>(&mut stream));
    match kept {
        Ok(FromDest::Kept) => {}
        Ok(other) => return Err(stopped.restart(expect(other, "Kept"), SourceState::MaybeTwice)),
        Err(e) => return Err(stopped.restart(e.into(), SourceState::MaybeTwice)),
    }
    let source_removed = !config.keep_source && docker.remove(&spec.id).is_ok();
    let handoff = downtime
        .saturating_sub(made.wall)
        .saturating_sub(transfer.elapsed)
        .saturating_sub(restore);
    Ok(SendReport {
        container: spec.name,
        source_id: spec.id,
        dest_name,
        dest_id,
        image: spec.image,
        image_push,
        preflight,
        checkpoint: made.wall,
        criu_dump: made.criu,
        criu_dump_run: made.criu_run,
        transfer,
        restore,
        restore_time_us,
        downtime,
        handoff,
        total: start.elapsed(),
        source_removed,
    })
}

/// The destination's answer to the offer: its container's name and ID,
/// once created; before that, when it lacks the image, the image pushed
/// through the registry (the push's wall time).
fn accepted<S: Transport + ?Sized>(
    docker: &DockerClient,
    stream: &mut S,
    spec: &ContainerSpec,
    config: &SendConfig,
) -> Result<(String, String, Option<Duration>)> {
    let mut stream = stream;
    let mut push = None;
    loop {
        match recv_message(&mut stream)? {
            FromDest::Accepted { name, id } => return Ok((name, id, push)),
            FromDest::Refused { reasons } => {
                return Err(Error::Refused {
                    side: "destination",
                    reasons,
                })
            }
            FromDest::NeedImage if push.is_none() => {
                let registry = config.registry.as_deref().ok_or_else(|| {
                    Error::Protocol("the destination asked for the image, unoffered".into())
                })?;
                let pushed = match image::push(docker, spec, registry) {
                    Ok(p) => p,
                    Err(e) => {
                        let e = Error::Refused {
                            side: "source",
                            reasons: vec![format!(
                                "cannot push the container's image to {registry}: {e} (can \
                                 this host's daemon reach it? a plain-HTTP registry must be in \
                                 its insecure-registries)"
                            )],
                        };
                        let _ = send_message(
                            &mut stream,
                            &FromSource::Abort {
                                reason: e.to_string(),
                            },
                        );
                        return Err(e);
                    }
                };
                push = Some(pushed.elapsed);
                let msg = FromSource::Pushed {
                    reference: pushed.reference,
                };
                send_message(&mut stream, &msg)?;
            }
            other => return Err(expect(other, "Accepted")),
        }
    }
}

/// The checkpoint failed: the destination is told (it removes its
/// container), and the error says whether the source still runs (a
/// failed CRIU dump resumes the tasks).
fn failed_checkpoint(
    docker: &DockerClient,
    stream: &mut impl std::io::Write,
    id: &str,
    data_root: &std::path::Path,
    name: &str,
    e: Error,
) -> Error {
    let _ = send_message(
        stream,
        &FromSource::Abort {
            reason: e.to_string(),
        },
    );
    let state = match docker.running(id) {
        Ok(true) => SourceState::Running,
        _ => SourceState::Stopped {
            checkpoint: checkpoint::checkpoint_dir(data_root, id, name),
        },
    };
    Error::Moving {
        cause: Box::new(e),
        source_state: state,
    }
}

/// Fails if the checkpoint holds anything but regular files (the image
/// stream carries a flat directory; Docker 20.10's checkpoints are one).
fn only_files(dir: &std::path::Path) -> Result<()> {
    let what = format!("listing the checkpoint {}", dir.display());
    for entry in std::fs::read_dir(dir).map_err(Error::io(what.clone()))? {
        let entry = entry.map_err(Error::io(what.clone()))?;
        if !entry
            .file_type()
            .map_err(Error::io(what.clone()))?
            .is_file()
        {
            return Err(Error::Protocol(format!(
                "the checkpoint holds {:?}, which is not a regular file: this Docker's \
                 checkpoints cannot be carried as a flat directory",
                entry.file_name()
            )));
        }
    }
    Ok(())
}

/// Sends the checkpoint and waits for the destination's restore: the
/// transfer's statistics, its restore wall time and CRIU's restore time.
fn carry<S: Transport + ?Sized>(
    stream: &mut S,
    made: &Made,
) -> Result<(criu::transfer::TransferStats, Duration, Option<u64>)> {
    let mut stream = stream;
    only_files(&made.dir)?;
    send_message(&mut stream, &FromSource::Checkpointed)?;
    let transfer = send_dir(&mut stream, &made.dir, None)?;
    match recv_message(&mut stream)? {
        FromDest::Restored {
            restore_us,
            restore_time_us,
        } => Ok((transfer, Duration::from_micros(restore_us), restore_time_us)),
        FromDest::Failed { reason } => Err(Error::Restore(reason)),
        other => Err(expect(other, "Restored")),
    }
}
