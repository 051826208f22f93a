//! Migrate a live container between two hosts, with criu-rs and with runc,
//! and print both side by side.
//!
//! ```text
//! migrate_container [--interval SECS] [--warmup-ms MS] [--json FILE] [--skip-runc]
//! ```
//!
//! The container is the classic busybox counter,
//! `/bin/sh -c 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done'`
//! (the interval is configurable), with its own PID, mount, UTS, IPC and
//! network namespaces, a root filesystem made from Debian's busybox-static,
//! and its output going to a log file on the host (bind-mounted at `/log`).
//! It is checkpointed on host A, its images cross a TCP connection, and it
//! is restored on host B; the count must go on from the last number printed
//! before the checkpoint plus one.
//!
//! The same container is then run by runc (the engine under Docker and
//! Podman, which drives CRIU itself): `runc checkpoint` on host A, the same
//! image transfer code, `runc restore` on host B.
//!
//! Each engine is one implementation of `criu_testkit::container::Engine`;
//! one driver starts, migrates and measures them all alike.
//!
//! busybox's shell has no clock, so the downtime is observed from outside:
//! a host thread polls the log every millisecond and reports the largest
//! gap between two new lines (this includes one ordinary interval).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use criu_testkit::container::{migrate_measured, BoxError, Engine, OwnEngine, Row, RuncEngine};
use criu_testkit::hosts::TwoHosts;

#[derive(Parser)]
#[command(
    about = "Migrate a busybox container between two netns hosts, with criu-rs and with runc"
)]
struct Cli {
    /// Seconds between counter lines (busybox sleep takes fractions).
    #[arg(long, default_value = "0.1")]
    interval: String,
    /// How long the container counts on host A first, in ms.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Write the result objects (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only the criu-rs migration.
    #[arg(long)]
    skip_runc: bool,
}

/// Builds one engine in its own work directory.
type MakeEngine = fn(&Path) -> Result<Box<dyn Engine>, BoxError>;

fn own(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(OwnEngine::new(dir)?))
}

fn runc(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(RuncEngine::new(dir)?))
}

/// One migration with a fresh pair of hosts; the engine (and with it its
/// containers) goes before the hosts do.
fn run_engine(cli: &Cli, work: &Path, name: &str, make: MakeEngine) -> Result<Row, BoxError> {
    let dir = work.join(name);
    fs::create_dir_all(&dir)?;
    let hosts = TwoHosts::new()?;
    let mut engine = make(&dir)?;
    let warmup = Duration::from_millis(cli.warmup_ms);
    migrate_measured(engine.as_mut(), &hosts, &cli.interval, warmup)
}

fn frozen_ms(r: &Row) -> String {
    r.cost
        .criu
        .frozen_time_us
        .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}  {:<26} netns a -> b",
        "engine",
        "rss KiB",
        "dump ms",
        "frozen ms",
        "sent KiB",
        "xfer ms",
        "restore ms",
        "downtime ms",
        "count",
    );
    for r in rows {
        let count = format!(
            "{} -> {} ({})",
            r.last_before,
            r.first_after,
            if r.continued { "ok" } else { "BROKEN" }
        );
        println!(
            "{:<8} {:>8} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>10.1} {:>11.1}  {:<26} {} -> {}",
            r.engine,
            r.cost.rss_bytes / 1024,
            r.cost.dump_ms,
            frozen_ms(r),
            r.cost.transfer_bytes as f64 / 1024.0,
            r.cost.transfer_ms,
            r.cost.restore_ms,
            r.cost.downtime_ms,
            count,
            r.source_netns,
            r.dest_netns
        );
    }
    if let [a, b] = rows {
        println!(
            "{} / {}: dump {:.2}x, restore {:.2}x, downtime {:.2}x",
            a.engine,
            b.engine,
            a.cost.dump_ms / b.cost.dump_ms.max(0.001),
            a.cost.restore_ms / b.cost.restore_ms.max(0.001),
            a.cost.downtime_ms / b.cost.downtime_ms.max(0.001)
        );
    }
}

fn write_json(path: &Path, rows: &[Row]) -> io::Result<()> {
    let text = serde_json::to_string_pretty(rows).map_err(io::Error::other)?;
    fs::write(path, text + "\n")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.interval.parse::<f64>().map_or(true, |v| v <= 0.0) {
        eprintln!("error: --interval takes a positive number of seconds");
        return ExitCode::from(2);
    }
    let work = match tempfile::Builder::new()
        .prefix("criu-rs-container-")
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut engines: Vec<(&str, MakeEngine)> = vec![("criu-rs", own)];
    if !cli.skip_runc {
        engines.push(("runc", runc));
    }
    let (mut rows, mut failed) = (Vec::new(), false);
    for (name, make) in engines {
        eprintln!("migrating the busybox container with {name}...");
        match run_engine(&cli, work.path(), name, make) {
            Ok(r) => {
                failed |= !r.continued;
                rows.push(r);
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    print_table(&rows);
    if let Some(p) = &cli.json {
        if let Err(e) = write_json(p, &rows) {
            eprintln!("error: writing {}: {e}", p.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
