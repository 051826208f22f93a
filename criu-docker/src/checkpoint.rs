//! Checkpoints in a daemon's files: where they live, making one (with
//! CRIU's timings kept), and starting a container again from one.
//!
//! Docker 20.10 refuses `docker start --checkpoint-dir`, so a checkpoint
//! is always used from the container's own folder,
//! `<data-root>/containers/<id>/checkpoints/<name>`: the source's after
//! `docker checkpoint create`, the destination's where the carried
//! checkpoint is placed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu::DumpStats;

use crate::client::DockerClient;
use crate::error::{Error, Result};

/// A checkpoint's folder in the daemon's files.
pub fn checkpoint_dir(data_root: &Path, id: &str, name: &str) -> PathBuf {
    data_root
        .join("containers")
        .join(id)
        .join("checkpoints")
        .join(name)
}

/// Where containerd lets runc and CRIU work for a container's task: under
/// the data root when dockerd runs its own containerd, under /run for a
/// system containerd.
fn task_dir(data_root: &Path, id: &str) -> Option<PathBuf> {
    let tail = format!("io.containerd.runtime.v2.task/moby/{id}");
    [
        data_root.join("containerd/daemon").join(&tail),
        Path::new("/run/containerd").join(&tail),
    ]
    .into_iter()
    .find(|d| d.is_dir())
}

/// CRIU's `stats-restore` for a container just started from a checkpoint:
/// its `restore_time` in µs, when CRIU left it.
pub(crate) fn restore_time_us(data_root: &Path, id: &str) -> Option<u64> {
    let dir = task_dir(data_root, id)?;
    let stats = criu::ImagesDir::open(&dir).ok()?.restore_stats().ok()??;
    Some(stats.restore?.restore_time.as_micros() as u64)
}

/// A checkpoint made by [`create`].
#[derive(Debug, Clone)]
pub struct Made {
    /// Its folder.
    pub dir: PathBuf,
    /// The `docker checkpoint create` call's wall time: the container
    /// stops at its start.
    pub wall: Duration,
    /// CRIU's dump statistics, when they could be kept.
    pub criu: Option<DumpStats>,
    /// How long CRIU ran, from its first log line to its last (the rest of
    /// `wall` is runc, containerd and Docker), when its log could be kept.
    pub criu_run: Option<Duration>,
}

/// Second names for the files CRIU writes in its work directory, which
/// containerd deletes as soon as a checkpoint is done (or has failed).
/// CRIU opens them with O_TRUNC, keeping the inode, so a hard link made
/// beforehand keeps what it wrote.
struct Kept {
    work: PathBuf,
    keep: PathBuf,
}

const KEPT: [&str; 2] = ["stats-dump", "dump.log"];

impl Kept {
    fn prepare(data_root: &Path, id: &str) -> Option<Kept> {
        let task = task_dir(data_root, id)?;
        let work = task.join("criu-work");
        let keep = task.parent()?.join(format!(".criu-docker-{id}"));
        let link = |f: &str| -> std::io::Result<()> {
            let _ = fs::remove_file(keep.join(f));
            fs::File::create(work.join(f))?;
            fs::hard_link(work.join(f), keep.join(f))
        };
        let made = fs::create_dir_all(&work)
            .and_then(|()| fs::create_dir_all(&keep))
            .and_then(|()| KEPT.iter().try_for_each(|f| link(f)));
        let kept = Kept { work, keep };
        made.ok().map(|()| kept)
    }

    fn stats(&self) -> Option<DumpStats> {
        criu::ImagesDir::open(&self.keep)
            .ok()?
            .dump_stats()
            .ok()??
            .dump
    }

    /// The time stamp of the last line of CRIU's log (`(12.345678) ...`):
    /// how long CRIU ran.
    fn run_time(&self) -> Option<Duration> {
        let text = fs::read_to_string(self.keep.join("dump.log")).ok()?;
        let last = text.lines().rev().find(|l| l.starts_with('('))?;
        let stamp = last.get(1..last.find(')')?)?.trim();
        Duration::try_from_secs_f64(stamp.parse().ok()?).ok()
    }

    /// The `Error` lines of CRIU's log (its last lines if it has none).
    fn errors(&self) -> String {
        let text = fs::read_to_string(self.keep.join("dump.log")).unwrap_or_default();
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
        let lines = if errors.is_empty() {
            text.lines().collect()
        } else {
            errors
        };
        lines[lines.len().saturating_sub(6)..].join("\n  ")
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.keep);
        // Left when the checkpoint did not run at all.
        for f in KEPT {
            let _ = fs::remove_file(self.work.join(f));
        }
    }
}

/// `docker checkpoint create` of the container `id` as `name`, stopping
/// it (the daemon reports it stopped a moment after this returns).
pub fn create(docker: &DockerClient, data_root: &Path, id: &str, name: &str) -> Result<Made> {
    let kept = Kept::prepare(data_root, id);
    let t = Instant::now();
    if let Err(e) = docker.checkpoint(id, name, true) {
        return Err(Error::Checkpoint {
            container: id.into(),
            checkpoint: name.into(),
            message: match e {
                Error::Docker { source, .. } => source.to_string(),
                other => other.to_string(),
            },
            criu_log: kept.as_ref().map(Kept::errors),
        });
    }
    let wall = t.elapsed();
    // The daemon marks the container exited a moment after the call; the
    // move need not wait for that (only a restart here does).
    Ok(Made {
        dir: checkpoint_dir(data_root, id, name),
        wall,
        criu: kept.as_ref().and_then(Kept::stats),
        criu_run: kept.as_ref().and_then(Kept::run_time),
    })
}

/// Starts a checkpointed container again from its own checkpoint `name`,
/// once the daemon reports it stopped.
pub fn restart(docker: &DockerClient, id: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker.running(id)? {
        if Instant::now() > deadline {
            return Err(Error::Restore(format!(
                "{id} still runs 30 s after its checkpoint: it cannot start from it"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    start(docker, id, name)
}

/// Starts a container that is not running from the checkpoint `name` in
/// its own folder. Right after `checkpoint create`, Docker 20.10 can
/// refuse with "failed to upload checkpoint to containerd: ... already
/// exists" until containerd has collected the checkpoint's earlier copy:
/// that answer is retried for up to 10 s.
pub fn start(docker: &DockerClient, id: &str, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match docker.start_from_checkpoint(id, name) {
            Err(e) if e.to_string().contains("already exists") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}
