//! What the demo binaries (`demo-container`, `demo-migrate`) share: the
//! sender's progress line, the cost table, the JSON file and the exit
//! status.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::measure::Row;

/// The images sent so far, as one line on stderr once a second while a
/// transfer lasts, when stderr is a terminal. (Deliberately plain: the
/// installable command, criu-cli, draws real progress bars; the demos
/// only need to show they are alive, and the test kit stays free of
/// terminal crates.)
pub struct Bar {
    last: Instant,
    shown: bool,
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Bar {
    /// Nothing shown yet.
    pub fn new() -> Bar {
        Bar {
            last: Instant::now(),
            shown: std::io::stderr().is_terminal(),
        }
    }

    /// Bytes done, bytes in total (0 while unknown).
    pub fn update(&mut self, done: u64, total: u64) {
        if self.shown && self.last.elapsed() > Duration::from_secs(1) {
            self.last = Instant::now();
            let mib = |b: u64| b as f64 / 1048576.0;
            eprintln!("  sent {:.1} of {:.1} MiB", mib(done), mib(total.max(done)));
        }
    }

    /// The closure `SourceConfig::progress` takes.
    pub fn callback(mut self) -> impl FnMut(u64, u64) + Send {
        move |done, total| self.update(done, total)
    }
}

/// The cost table, one line per migration.
pub fn print_table(rows: &[Row]) {
    let opt =
        |v: Option<u64>, div: f64| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / div));
    println!(
        "{:<14} {:<5} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>9}  {:<9} netns a -> b",
        "strategy",
        "link",
        "rss MiB",
        "dump ms",
        "frozen ms",
        "sent MiB",
        "xfer ms",
        "restore ms",
        "downtime",
        "continued",
        "memory",
    );
    for r in rows {
        println!(
            "{:<14} {:<5} {:>9.1} {:>9.1} {:>9} {:>10.1} {:>9.1} {:>10.1} {:>7.1} ms {:>9}  {:<9} {} -> {}",
            r.strategy,
            r.transport,
            r.cost.rss_bytes as f64 / 1048576.0,
            r.cost.dump_ms,
            opt(r.cost.criu.frozen_time_us, 1000.0),
            r.cost.transfer_bytes as f64 / 1048576.0,
            r.cost.transfer_ms,
            r.cost.restore_ms,
            r.cost.downtime_ms,
            if r.continued { "yes" } else { "NO" },
            r.memory_intact.map_or("-", |ok| if ok { "intact" } else { "CHANGED" }),
            r.source_netns,
            r.dest_netns,
        );
    }
}

/// Writes the rows as a JSON array.
pub fn write_json<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// How a demo ends: its rows written to `json` when asked (a failure to
/// write fails the run too), and failure if any move `failed`.
pub fn finish<T: serde::Serialize>(json: Option<&Path>, rows: &[T], failed: bool) -> ExitCode {
    let written = json.map_or(Ok(()), |path| write_json(path, rows));
    if let Err(e) = &written {
        eprintln!("error: {e}");
    }
    if failed || written.is_err() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
