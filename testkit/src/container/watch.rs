//! What the host can observe of a running container: when new lines
//! appear in its log file, and how much memory its tree holds.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BoxError, Downtime};
use crate::measure::ms;

/// Watches a log file from the host and remembers when each line appeared.
/// busybox's shell has no clock, so this is how the downtime of a counter
/// that logs to a file is seen: the largest gap between two new lines
/// (which includes one ordinary interval).
pub struct FileWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Instant>>>,
}

impl FileWatcher {
    /// Starts polling `log` every millisecond.
    pub fn start(log: PathBuf) -> FileWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            while !flag.load(Ordering::Relaxed) {
                let n = fs::read_to_string(&log)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                if n != last {
                    seen.push(Instant::now());
                    last = n;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        FileWatcher {
            stop,
            handle: Some(handle),
        }
    }
}

impl Downtime for FileWatcher {
    fn finish(mut self: Box<Self>) -> Result<f64, BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self
            .handle
            .take()
            .ok_or("the log watcher was already finished")?
            .join()
            .map_err(|_| "the log watcher panicked")?;
        Ok(seen
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .map_or(0.0, ms))
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// VmRSS of `root` and all its descendants, in bytes.
pub fn rss_of_tree(root: i32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        total += crate::measure::rss_bytes(p);
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    total
}
