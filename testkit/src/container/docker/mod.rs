//! Docker as an engine: two Docker hosts (each a network namespace with a
//! `dockerd` of its own), the busybox counter as a real Docker container,
//! `docker checkpoint create` on host a, the checkpoint moved with
//! `criu::transfer`, `docker start --checkpoint` of a clone on host b.
//!
//! What Docker 20.10 allows, and the choices made here:
//! - A checkpoint without `--leave-running` stops the source container;
//!   it stays (exited), with the checkpoint in its own checkpoints folder,
//!   until host b has restored. If anything fails after the checkpoint, the
//!   source is started again from that same checkpoint and counts on: no
//!   line is lost or repeated. (With `--leave-running` the source would go
//!   on printing after the checkpoint and the clone would print the same
//!   numbers again.)
//! - `docker start --checkpoint-dir` is refused ("custom checkpointdir is
//!   not supported"), so the checkpoint is placed in the clone's own
//!   folder, `<data-root>/containers/<id>/checkpoints/<name>`.
//! - containerd deletes CRIU's work directory (with `stats-dump` and
//!   `dump.log`) as soon as a checkpoint is done; the engine links both
//!   files into its own folder beforehand, so that CRIU's timings, and its
//!   log when the checkpoint fails, can be read afterwards.

mod api;
mod daemon;
mod image;
mod logs;
mod raw;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::phased::{
    dump_times_in, migrate_phased, restore_time_in, Checkpointed, Phased, Restored,
};
use super::{BoxError, Downtime, Engine, Moved, SCRIPT};
use crate::hosts::{Relay, TwoHosts};

pub use api::{Api, LogLine, State};
pub use daemon::{mounts_below, processes_mentioning, DockerHost};
use logs::{Containers, Logs};

/// The checkpoint's name, on both hosts.
const CHECKPOINT: &str = "criu-rs";

/// Damage done to a checkpoint once it has arrived on host b (for tests
/// of the failure paths).
pub type Damage = fn(&Path);

/// The counter as a Docker container, as an [`Engine`].
pub struct DockerEngine {
    dir: PathBuf,
    name: String,
    logs: Option<Logs>,
    damage: Option<Damage>,
    relay: Option<Relay>,
}

impl DockerEngine {
    /// Prepares `dir`, where both Docker hosts will keep everything.
    pub fn new(dir: &Path) -> Result<DockerEngine, BoxError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        fs::create_dir_all(dir)?;
        Ok(DockerEngine {
            dir: dir.to_path_buf(),
            name: format!("criu-rs-counter-{}-{n}", std::process::id()),
            logs: None,
            damage: None,
            relay: None,
        })
    }

    /// Damages the checkpoint on host b before the restore (tests).
    pub fn damage_on_arrival(&mut self, damage: Damage) {
        self.damage = Some(damage);
    }

    /// Sends the checkpoint through `relay` on host b (tests).
    pub fn relay_through(&mut self, relay: Relay) {
        self.relay = Some(relay);
    }

    /// The two daemons and the containers, once started.
    pub fn logs(&self) -> Result<&Logs, BoxError> {
        self.logs
            .as_ref()
            .ok_or_else(|| "the Docker container was not started".into())
    }

    /// The container's name (the same on both hosts).
    pub fn container_name(&self) -> &str {
        &self.name
    }

    /// The source container's state on host a.
    pub fn source_state(&self) -> Result<State, BoxError> {
        let logs = self.logs()?;
        logs.a.api().state(&logs.ids()?.source)
    }
}

/// Both daemons, started side by side.
fn start_daemons(hosts: &TwoHosts, dir: &Path) -> Result<(DockerHost, DockerHost), BoxError> {
    std::thread::scope(|s| {
        let b = s.spawn(|| DockerHost::start(&hosts.b, &dir.join("b")));
        let a = DockerHost::start(&hosts.a, &dir.join("a"));
        let b = b.join().map_err(|_| "starting dockerd on b panicked")?;
        Ok((a?, b?))
    })
}

impl Engine for DockerEngine {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        let (a, b) = start_daemons(hosts, &self.dir)?;
        let script = SCRIPT.replace("INTERVAL", interval);
        let image = format!("{}:{}", image::IMAGE.0, image::IMAGE.1);
        let source = a
            .api()
            .create(&self.name, &image, &["/bin/sh", "-c", &script])?;
        let logs = Logs::new(a, b, Containers::new(source.clone(), image, script));
        self.logs = Some(logs);
        let logs = self.logs()?;
        logs.a.api().start(&source)?;
        Ok(logs.a.api().state(&source)?.pid)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        Ok(self
            .logs()?
            .lines()?
            .iter()
            .filter_map(|l| l.text.trim().parse().ok())
            .collect())
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        match &self.logs {
            Some(logs) => Box::new(logs.clone()),
            None => Box::new(logs::NotStarted),
        }
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        migrate_phased(self, hosts)
    }
}

/// Where containerd lets CRIU work for a container's task.
fn task_dir(data_root: &Path, id: &str) -> PathBuf {
    data_root.join(format!(
        "containerd/daemon/io.containerd.runtime.v2.task/moby/{id}"
    ))
}

/// Creates `files` in `dir` (empty) with a second name in `keep`, so that
/// what CRIU writes there survives the directory's removal (CRIU opens
/// them with O_TRUNC, keeping the inode).
fn keep_files(dir: &Path, keep: &Path, files: &[&str]) -> Result<(), BoxError> {
    fs::create_dir_all(dir)?;
    fs::create_dir_all(keep)?;
    for f in files {
        let _ = fs::remove_file(keep.join(f));
        fs::File::create(dir.join(f))?;
        fs::hard_link(dir.join(f), keep.join(f))?;
    }
    Ok(())
}

fn wait_until_stopped(host: &DockerHost, id: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + super::WAIT;
    while host.api().state(id)?.running {
        if Instant::now() > deadline {
            return Err(format!("{id} still runs after its checkpoint").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// The last `Error` lines of CRIU's log, or its last lines if it has none.
fn criu_errors(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    let lines = if errors.is_empty() {
        text.lines().collect()
    } else {
        errors
    };
    lines[lines.len().saturating_sub(6)..].join("\n  ")
}

impl Phased for DockerEngine {
    fn checkpoint(&mut self, _hosts: &TwoHosts) -> Result<Checkpointed, BoxError> {
        let logs = self.logs()?;
        let (a, source) = (&logs.a, logs.ids()?.source);
        if !a.api().state(&source)?.running {
            return Err(format!("the source container {source} is not running").into());
        }
        let keep = a.data_root().join("criu-rs-dump");
        let work = task_dir(&a.data_root(), &source).join("criu-work");
        keep_files(&work, &keep, &["stats-dump", "dump.log"])?;
        let t = Instant::now();
        if let Err(e) = a.api().checkpoint(&source, CHECKPOINT) {
            let log = keep.join("dump.log");
            return Err(format!(
                "{e}\nCRIU's dump log ({}):\n  {}",
                log.display(),
                criu_errors(&log)
            )
            .into());
        }
        let wall = t.elapsed();
        // The daemon marks the container exited a moment after the call.
        wait_until_stopped(a, &source)?;
        logs.freeze_source_log()?;
        Ok(Checkpointed {
            images: a
                .data_root()
                .join(format!("containers/{source}/checkpoints/{CHECKPOINT}")),
            wall,
            criu: dump_times_in(&keep)?,
            criu_files: Some(keep),
        })
    }

    fn landing(&mut self, _hosts: &TwoHosts) -> Result<PathBuf, BoxError> {
        let logs = self.logs()?;
        let ids = logs.ids()?;
        let cmd = ["/bin/sh", "-c", ids.script.as_str()];
        let clone = logs.b.api().create(&self.name, &ids.image, &cmd)?;
        logs.set_clone(clone.clone())?;
        let folder = logs
            .b
            .data_root()
            .join(format!("containers/{clone}/checkpoints"));
        fs::create_dir_all(&folder)?;
        Ok(folder.join(CHECKPOINT))
    }

    fn restore(&mut self, _hosts: &TwoHosts, images: &Path) -> Result<Restored, BoxError> {
        if let Some(damage) = self.damage {
            damage(images);
        }
        let logs = self.logs()?;
        let ids = logs.ids()?;
        let clone = ids.clone.ok_or("no clone on host b")?;
        let t = Instant::now();
        logs.b.api().start_from_checkpoint(&clone, CHECKPOINT)?;
        let wall = t.elapsed();
        let pid = logs.b.api().state(&clone)?.pid;
        // Host b runs the container: the source may go now.
        logs.a.api().remove(&ids.source)?;
        Ok(Restored {
            wall,
            restore_time_us: restore_time_in(&task_dir(&logs.b.data_root(), &clone))?,
            pid,
        })
    }

    fn relay(&self) -> Option<Relay> {
        self.relay
    }

    fn recover(&mut self, _hosts: &TwoHosts) -> Result<(), BoxError> {
        let logs = self.logs()?;
        let ids = logs.ids()?;
        if let Some(clone) = &ids.clone {
            let _ = logs.b.api().remove(clone);
            logs.forget_clone()?;
        }
        if !logs.a.api().state(&ids.source)?.running {
            restart_from_checkpoint(&logs.a, &ids.source)
                .map_err(|e| format!("restarting the source from its checkpoint: {e}"))?;
        }
        logs.thaw_source_log()
    }
}

/// Starts a checkpointed container again from its own checkpoint. Right
/// after `checkpoint create`, Docker 20.10 can refuse with "failed to
/// upload checkpoint to containerd: ... already exists" until containerd
/// has collected the checkpoint's earlier copy: that answer is retried for
/// up to 10 s.
fn restart_from_checkpoint(host: &DockerHost, id: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match host.api().start_from_checkpoint(id, CHECKPOINT) {
            Err(e) if e.to_string().contains("already exists") && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            done => return done,
        }
    }
}
