//! Migrate a live container between two hosts, with criu-rs, with runc and
//! with Docker, and print the engines side by side.
//!
//! ```text
//! demo-container [--engine criu-rs|runc|docker|registry|docker-registry|all]
//!                [--interval SECS]
//!                [--warmup-ms MS] [--reps N] [--json FILE]
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
//! Then by Docker: each host runs a `dockerd` of its own, the counter is a
//! Docker container of a busybox image imported from Debian's
//! busybox-static, `docker checkpoint create` runs on host A (the source
//! stays, stopped, until B has restored), the checkpoint crosses the same
//! TCP transfer into the clone's checkpoints folder on host B, and `docker
//! start --checkpoint` restores it there. Docker timestamps every log line,
//! so its downtime is the largest gap between two lines in Docker's log.
//!
//! Last, the checkpoints go as OCI images through a registry
//! (docker-registry) on a third host, pushed on A, pulled on B:
//! criu-rs's container (`registry`), then Docker's (`docker+registry`:
//! `docker checkpoint create` on A, the checkpoint packed as a checkpoint
//! archive with the `org.criu.checkpoint.*` annotations, pushed, pulled
//! and verified on B, unpacked into the clone's checkpoints folder,
//! `docker start --checkpoint`). Their push and pull times have columns
//! of their own (and a `registry` object in the JSON).
//!
//! Each engine is one implementation of `criu_testkit::container::Engine`;
//! one driver starts, migrates and measures them all alike.
//!
//! busybox's shell has no clock, so the downtime is observed from outside:
//! a host thread polls the log every millisecond and reports the largest
//! gap between two new lines (this includes one ordinary interval).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use criu_testkit::container::{
    migrate_measured, BoxError, DockerEngine, Engine, OwnEngine, RegistryCost, Row, RuncEngine,
};
use criu_testkit::hosts::TwoHosts;

use criu_testkit::demo::finish;

#[derive(Parser)]
#[command(
    about = "Migrate a busybox container between two netns hosts, with criu-rs, runc and Docker"
)]
struct Cli {
    /// Which engine moves the container.
    #[arg(long, value_enum, default_value_t = Which::All)]
    engine: Which,
    /// Migrations per engine, interleaved; medians are printed when > 1.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Seconds between counter lines (busybox sleep takes fractions).
    #[arg(long, default_value = "0.1")]
    interval: String,
    /// How long the container counts on host A first, in ms.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Write the result objects (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Which {
    #[value(name = "criu-rs")]
    CriuRs,
    Runc,
    Docker,
    Registry,
    DockerRegistry,
    All,
}

/// Builds one engine in its own work directory.
type MakeEngine = fn(&Path) -> Result<Box<dyn Engine>, BoxError>;

fn own(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(OwnEngine::new(dir)?))
}

fn runc(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(RuncEngine::new(dir)?))
}

fn docker(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(DockerEngine::new(dir)?))
}

fn registry(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(criu_testkit::registry::RegistryEngine::new(dir)?))
}

fn docker_registry(dir: &Path) -> Result<Box<dyn Engine>, BoxError> {
    Ok(Box::new(criu_testkit::registry::DockerRegistryEngine::new(
        dir,
    )?))
}

/// The engines `which` selects, in table order.
fn engines(which: Which) -> Vec<(&'static str, MakeEngine)> {
    let all: [(&str, Which, MakeEngine); 5] = [
        ("criu-rs", Which::CriuRs, own),
        ("runc", Which::Runc, runc),
        ("docker", Which::Docker, docker),
        ("registry", Which::Registry, registry),
        ("docker+registry", Which::DockerRegistry, docker_registry),
    ];
    all.into_iter()
        .filter(|(_, w, _)| which == Which::All || which == *w)
        .map(|(name, _, make)| (name, make))
        .collect()
}

/// One migration with a fresh pair of hosts; the engine (and with it its
/// containers) goes before the hosts do.
fn run_engine(cli: &Cli, work: &Path, name: &str, make: MakeEngine) -> Result<Row, BoxError> {
    let dir = tempfile::Builder::new().prefix(name).tempdir_in(work)?;
    let dir = dir.path();
    let hosts = TwoHosts::new()?;
    let mut engine = make(dir)?;
    let warmup = Duration::from_millis(cli.warmup_ms);
    migrate_measured(engine.as_mut(), &hosts, &cli.interval, warmup)
}

fn frozen_ms(r: &Row) -> String {
    r.cost
        .criu
        .frozen_time_us
        .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

/// A registry move's push or pull time, `-` for the direct moves.
fn registry_ms(r: &Row, f: fn(&RegistryCost) -> f64) -> String {
    r.registry
        .as_ref()
        .map_or("-".into(), |c| format!("{:.1}", f(c)))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>11}  {:<26} netns a -> b",
        "engine",
        "rss KiB",
        "dump ms",
        "frozen ms",
        "sent KiB",
        "xfer ms",
        "push ms",
        "pull ms",
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
            "{:<15} {:>8} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>8} {:>8} {:>10.1} {:>11.1}  {:<26} {} -> {}",
            r.engine,
            r.cost.rss_bytes / 1024,
            r.cost.dump_ms,
            frozen_ms(r),
            r.cost.transfer_bytes as f64 / 1024.0,
            r.cost.transfer_ms,
            registry_ms(r, |c| c.push_ms),
            registry_ms(r, |c| c.pull_ms),
            r.cost.restore_ms,
            r.cost.downtime_ms,
            count,
            r.source_netns,
            r.dest_netns
        );
    }
}

/// Each engine's ratios to the first engine of the table.
fn print_ratios(rows: &[Row]) {
    let Some(base) = rows.first() else { return };
    for r in rows.iter().filter(|r| r.engine != base.engine) {
        println!(
            "{} / {}: dump {:.2}x, restore {:.2}x, downtime {:.2}x",
            r.engine,
            base.engine,
            r.cost.dump_ms / base.cost.dump_ms.max(0.001),
            r.cost.restore_ms / base.cost.restore_ms.max(0.001),
            r.cost.downtime_ms / base.cost.downtime_ms.max(0.001)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One row per engine holding the medians of its runs (CRIU's own
/// timings and the count are those of the engine's median-downtime run).
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.engine.as_str()) {
            names.push(&r.engine);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let runs: Vec<&Row> = rows.iter().filter(|r| r.engine == name).collect();
            let of = |f: fn(&Row) -> f64| median(runs.iter().map(|r| f(r)).collect());
            let mut m = (*runs.iter().min_by(|a, b| {
                let d = of(|r| r.cost.downtime_ms);
                (a.cost.downtime_ms - d)
                    .abs()
                    .total_cmp(&(b.cost.downtime_ms - d).abs())
            })?)
            .clone();
            m.cost.dump_ms = of(|r| r.cost.dump_ms);
            m.cost.transfer_ms = of(|r| r.cost.transfer_ms);
            m.cost.restore_ms = of(|r| r.cost.restore_ms);
            m.cost.downtime_ms = of(|r| r.cost.downtime_ms);
            if let Some(c) = m.registry.as_mut() {
                c.push_ms = of(|r| r.registry.as_ref().map_or(0.0, |c| c.push_ms));
                c.pull_ms = of(|r| r.registry.as_ref().map_or(0.0, |c| c.pull_ms));
            }
            m.continued = runs.iter().all(|r| r.continued);
            Some(m)
        })
        .collect()
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
    let (mut rows, mut failed) = (Vec::new(), false);
    for rep in 0..cli.reps.max(1) {
        for (name, make) in engines(cli.engine) {
            eprintln!(
                "migrating the busybox container with {name} ({}/{})...",
                rep + 1,
                cli.reps.max(1)
            );
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
    }
    print_table(&rows);
    if cli.reps > 1 {
        println!(
            "\nmedians of {} runs per engine (dump, xfer, push, pull, restore, downtime; the other \
             columns are those of the run with the median downtime):",
            cli.reps
        );
        let m = medians(&rows);
        print_table(&m);
        print_ratios(&m);
    } else {
        print_ratios(&rows);
    }
    finish(cli.json.as_deref(), &rows, failed)
}
