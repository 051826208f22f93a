//! What the counter printed, read back from Docker: the source's log on
//! host a, then the clone's on host b, each line with the daemon's own
//! timestamp, so that the downtime is the largest gap between two lines.

use std::sync::{Arc, Mutex, MutexGuard};

use super::api::LogLine;
use super::daemon::DockerHost;
use crate::container::{BoxError, Downtime};
use crate::measure::ms;

/// The containers of one migration.
#[derive(Debug, Clone)]
pub struct Containers {
    /// The source's id on host a.
    pub source: String,
    /// The clone's id on host b, once created.
    pub clone: Option<String>,
    /// The image both run.
    pub image: String,
    /// The counter's script.
    pub script: String,
    /// The source's log, kept once it stopped (its container is removed
    /// after host b has restored).
    source_log: Option<Vec<LogLine>>,
}

impl Containers {
    /// A source container that has not been checkpointed yet.
    pub fn new(source: String, image: String, script: String) -> Containers {
        Containers {
            source,
            clone: None,
            image,
            script,
            source_log: None,
        }
    }
}

/// The two Docker hosts and the containers of the migration; shared with
/// the downtime measurement, which reads the logs when the migration ends.
#[derive(Clone)]
pub struct Logs {
    /// The source host's daemon.
    pub a: Arc<DockerHost>,
    /// The destination host's daemon.
    pub b: Arc<DockerHost>,
    containers: Arc<Mutex<Containers>>,
}

impl Logs {
    /// Both daemons and the source container.
    pub fn new(a: DockerHost, b: DockerHost, containers: Containers) -> Logs {
        Logs {
            a: Arc::new(a),
            b: Arc::new(b),
            containers: Arc::new(Mutex::new(containers)),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Containers>, BoxError> {
        self.containers
            .lock()
            .map_err(|_| "a thread panicked while holding the container list".into())
    }

    /// The containers (a copy).
    pub fn ids(&self) -> Result<Containers, BoxError> {
        Ok(self.lock()?.clone())
    }

    /// Records the clone created on host b.
    pub fn set_clone(&self, id: String) -> Result<(), BoxError> {
        self.lock()?.clone = Some(id);
        Ok(())
    }

    /// Keeps the stopped source's log for after its removal.
    pub fn freeze_source_log(&self) -> Result<(), BoxError> {
        let source = self.lock()?.source.clone();
        let lines = self.a.api().logs(&source)?;
        self.lock()?.source_log = Some(lines);
        Ok(())
    }

    /// The clone on host b is gone.
    pub fn forget_clone(&self) -> Result<(), BoxError> {
        self.lock()?.clone = None;
        Ok(())
    }

    /// The source runs again: read its log live.
    pub fn thaw_source_log(&self) -> Result<(), BoxError> {
        self.lock()?.source_log = None;
        Ok(())
    }

    /// Every line so far: the source's, then the clone's.
    pub fn lines(&self) -> Result<Vec<LogLine>, BoxError> {
        let c = self.ids()?;
        let mut lines = match c.source_log {
            Some(kept) => kept,
            None => self.a.api().logs(&c.source)?,
        };
        if let Some(clone) = &c.clone {
            lines.extend(self.b.api().logs(clone)?);
        }
        Ok(lines)
    }
}

impl Downtime for Logs {
    fn finish(self: Box<Self>) -> Result<f64, BoxError> {
        let lines = self.lines()?;
        let gaps = lines
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at).unwrap_or_default());
        Ok(gaps.max().map_or(0.0, ms))
    }
}

/// The downtime of a migration that never started.
pub struct NotStarted;

impl Downtime for NotStarted {
    fn finish(self: Box<Self>) -> Result<f64, BoxError> {
        Err("the Docker container was not started".into())
    }
}
