//! The destination side of a move.

use std::fs;
use std::time::{Duration, Instant};

use criu::transfer::{
    read_header, receive_dir_with, recv_message, send_message, Limits, Transport,
};

use crate::checkpoint;
use crate::client::DockerClient;
use crate::error::{Error, Result};
use crate::image;
use crate::preflight::{self, Checked, Prepared};
use crate::report::ReceiveReport;
use crate::spec::ContainerSpec;
use crate::wire::{FromDest, FromSource};

/// How the destination receives a container.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiveConfig {
    /// The container's name here (default: its name on the source).
    pub name: Option<String>,
    /// What the checkpoint may hold (file count, sizes, free space).
    pub limits: Limits,
    /// How long the source may stay silent (default 300 s: its
    /// checkpoint is one wait).
    pub timeout: Duration,
}

impl Default for ReceiveConfig {
    fn default() -> ReceiveConfig {
        ReceiveConfig {
            name: None,
            limits: Limits::default(),
            timeout: Duration::from_secs(300),
        }
    }
}

impl ReceiveConfig {
    /// The defaults.
    pub fn new() -> ReceiveConfig {
        ReceiveConfig::default()
    }

    /// Names the container here.
    pub fn name(mut self, name: impl Into<String>) -> ReceiveConfig {
        self.name = Some(name.into());
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> ReceiveConfig {
        self.limits = limits;
        self
    }

    /// Bounds each wait for the source.
    pub fn timeout(mut self, t: Duration) -> ReceiveConfig {
        self.timeout = t;
        self
    }
}

/// The container created here, removed on drop unless kept.
struct Clone<'a> {
    docker: &'a DockerClient,
    prepared: Prepared,
    keep: bool,
}

impl Drop for Clone<'_> {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.docker.remove(&self.prepared.id);
        }
    }
}

/// Receives a container that [`crate::send`] moves from the other end of
/// `stream`, and runs it on `docker`.
///
/// Pre-flight first (the image, volumes and network exist here, the name
/// is free, the daemon can restore): a refusal is sent to the source
/// before it stops anything. Then the container is created, the
/// checkpoint placed in its folder and the container started from it. On
/// any failure before it runs the container is removed and the source
/// starts its own again. Once it runs it is kept, even if the source goes
/// silent ([`ReceiveReport::source_confirmed`]).
pub fn receive<S: Transport + ?Sized>(
    docker: &DockerClient,
    stream: &mut S,
    config: &ReceiveConfig,
) -> Result<ReceiveReport> {
    stream
        .prepare(Some(config.timeout))
        .map_err(Error::io("setting the stream's timeouts"))?;
    let mut stream = stream;
    read_header(&mut stream)?;
    let (spec, checkpoint_name, registry) = match recv_message(&mut stream)? {
        FromSource::Offer {
            spec,
            checkpoint,
            registry,
        } => (*spec, checkpoint, registry),
        FromSource::Abort { reason } => {
            return Err(Error::Refused {
                side: "source",
                reasons: vec![reason],
            })
        }
        other => return Err(Error::Protocol(format!("expected an offer, got {other:?}"))),
    };
    if !criu::transfer::is_safe_name(&checkpoint_name) {
        return Err(Error::Protocol(format!(
            "the checkpoint name {checkpoint_name:?} is not a plain file name"
        )));
    }
    let name = config.name.clone().unwrap_or_else(|| spec.name.clone());
    let (prepared, image_pull) = match prepare(docker, &mut stream, &spec, &name, registry) {
        Ok(p) => p,
        Err(e) => {
            if !matches!(e, Error::Transfer(_)) {
                let reasons = match &e {
                    Error::Refused { reasons, .. } => reasons.clone(),
                    other => vec![other.to_string()],
                };
                let _ = send_message(&mut stream, &FromDest::Refused { reasons });
            }
            return Err(e);
        }
    };
    let mut clone = Clone {
        docker,
        prepared,
        keep: false,
    };
    let accepted = FromDest::Accepted {
        name: clone.prepared.name.clone(),
        id: clone.prepared.id.clone(),
    };
    send_message(&mut stream, &accepted)?;
    let (transfer, restore) = land(&mut stream, &clone, &checkpoint_name, config)?;
    let restore_time_us =
        checkpoint::restore_time_us(&clone.prepared.data_root, &clone.prepared.id);
    // From here on the container runs here: it is kept whatever follows.
    clone.keep = true;
    let restored = FromDest::Restored {
        restore_us: restore.as_micros() as u64,
        restore_time_us,
    };
    let confirmed =
        send_message(&mut stream, &restored).and_then(|()| recv_message::<FromSource>(&mut stream));
    let source_confirmed = matches!(confirmed, Ok(FromSource::Done))
        && send_message(&mut stream, &FromDest::Kept).is_ok();
    let dir = checkpoint::checkpoint_dir(
        &clone.prepared.data_root,
        &clone.prepared.id,
        &checkpoint_name,
    );
    let _ = fs::remove_dir_all(dir);
    let p = &clone.prepared;
    Ok(ReceiveReport {
        name: p.name.clone(),
        id: p.id.clone(),
        image: p.image.clone(),
        source_name: spec.name.clone(),
        source_id: spec.id.clone(),
        image_pull,
        transfer,
        restore,
        restore_time_us,
        source_confirmed,
    })
}

/// The pre-flight, with the image pulled through the registry when it is
/// missing here and the source offered one; then the container, created.
/// Returns it and the pull's wall time.
fn prepare<S: Transport + ?Sized>(
    docker: &DockerClient,
    stream: &mut S,
    spec: &ContainerSpec,
    name: &str,
    registry: bool,
) -> Result<(Prepared, Option<Duration>)> {
    let mut stream = stream;
    let (image, data_root, pull) = match preflight::destination(docker, spec, name, registry)? {
        Checked::Ready { image, data_root } => (image, data_root, None),
        Checked::NeedsImage { data_root } => {
            send_message(&mut stream, &FromDest::NeedImage)?;
            let reference = match recv_message(&mut stream)? {
                FromSource::Pushed { reference } => reference,
                FromSource::Abort { reason } => {
                    return Err(Error::Refused {
                        side: "source",
                        reasons: vec![reason],
                    })
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "expected the pushed image, got {other:?}"
                    )))
                }
            };
            let took = image::pull(docker, &reference).map_err(|e| Error::Refused {
                side: "destination",
                reasons: vec![format!(
                    "cannot pull the container's image from the registry: {e} (can this \
                     host's daemon reach it? a plain-HTTP registry must be in its \
                     insecure-registries)"
                )],
            })?;
            let image = preflight::pulled(docker, spec, &reference)?;
            (image, data_root, Some(took))
        }
    };
    let prepared = preflight::create(docker, spec, name, image, data_root)?;
    Ok((prepared, pull))
}

/// Receives the checkpoint into the container's folder and starts the
/// container from it; tells the source when that fails.
fn land<S: Transport + ?Sized>(
    stream: &mut S,
    clone: &Clone<'_>,
    checkpoint_name: &str,
    config: &ReceiveConfig,
) -> Result<(criu::transfer::TransferStats, Duration)> {
    let mut stream = stream;
    match recv_message(&mut stream)? {
        FromSource::Checkpointed => {}
        FromSource::Abort { reason } => {
            return Err(Error::Protocol(format!(
                "the source gave up after the pre-flight: {reason}"
            )))
        }
        other => {
            return Err(Error::Protocol(format!(
                "expected the checkpoint, got {other:?}"
            )))
        }
    }
    let p = &clone.prepared;
    let dir = checkpoint::checkpoint_dir(&p.data_root, &p.id, checkpoint_name);
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(Error::io(format!("creating {}", parent.display())))?;
    }
    let transfer = receive_dir_with(&mut stream, &dir, &config.limits, None)?;
    let t = Instant::now();
    let started = checkpoint::start(clone.docker, &p.id, checkpoint_name).and_then(|()| {
        if clone.docker.running(&p.id)? {
            Ok(())
        } else {
            Err(Error::Restore(format!(
                "{} exited right after its restore",
                p.name
            )))
        }
    });
    let restore = t.elapsed();
    if let Err(e) = started {
        let reason = e.to_string();
        let _ = send_message(
            &mut stream,
            &FromDest::Failed {
                reason: reason.clone(),
            },
        );
        return Err(match e {
            Error::Restore(_) => e,
            other => Error::Restore(other.to_string()),
        });
    }
    Ok((transfer, restore))
}
