//! Migrate a live process from one host to another and report the cost.
//!
//! ```text
//! migrate [--workload counter|memory:MIB] [--strategy stop-and-copy|page-server|lazy|all] [--json FILE]
//! ```
//!
//! The two hosts are network namespaces on this machine joined by a veth
//! pair; the images cross a real TCP connection between them. The workload
//! writes a timestamped counter line about every millisecond to its own
//! file (and, with `memory:MIB`, keeps that much memory filled with a
//! pattern it verifies after the move). It runs as the init of its own PID
//! namespace, because on one machine both "hosts" share pid numbers and the
//! source copy keeps its pids until the destination has restored.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use criu::migrate::Strategy;
use criu_testkit::measure::{migrate_workload, Row};

#[derive(Parser)]
#[command(about = "Migrate a live process between two network-namespace hosts with CRIU")]
struct Cli {
    /// `counter`, or `memory:MIB` for a counter holding MIB of patterned memory.
    #[arg(long, default_value = "counter")]
    workload: String,
    /// `stop-and-copy`, `page-server`, `lazy`, or `all` (each on a fresh workload).
    #[arg(long, default_value = "all")]
    strategy: String,
    /// Write one JSON object per strategy (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How long the workload runs on host A before it is moved, in ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
}

/// A progress bar that appears only when a transfer lasts over a second.
struct Bar {
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn update(&mut self, done: u64, total: u64) {
        if self.bar.is_none()
            && self.start.elapsed() > Duration::from_secs(1)
            && std::io::stderr().is_terminal()
        {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "  sending images {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template"),
            );
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn print_table(rows: &[Row]) {
    let opt =
        |v: Option<u64>, div: f64| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / div));
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>10} {:>9}  {:<9} netns a -> b",
        "strategy",
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
            "{:<14} {:>9.1} {:>9.1} {:>9} {:>10.1} {:>9.1} {:>10.1} {:>7.1} ms {:>9}  {:<9} {} -> {}",
            r.strategy,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mib = match cli.workload.as_str() {
        "counter" => 0,
        w => match w
            .strip_prefix("memory:")
            .and_then(|m| m.parse::<usize>().ok())
        {
            Some(m) if m > 0 => m,
            _ => {
                eprintln!("error: --workload takes `counter` or `memory:MIB` (MIB > 0), not {w:?}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let strategies: Vec<Strategy> = if cli.strategy == "all" {
        Strategy::ALL.to_vec()
    } else {
        match cli.strategy.parse() {
            Ok(s) => vec![s],
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for st in strategies {
        eprintln!("migrating a {} workload with {st}...", cli.workload);
        match migrate_workload(
            st,
            &cli.workload,
            mib,
            Duration::from_millis(cli.warmup_ms),
            {
                let mut bar = Bar {
                    start: Instant::now(),
                    bar: None,
                };
                move |done, total| bar.update(done, total)
            },
        ) {
            Ok(r) => {
                failed |= !r.continued
                    || r.memory_intact == Some(false)
                    || r.source_netns == r.dest_netns;
                rows.push(r);
            }
            Err(e) => {
                eprintln!("error: {st}: {e}");
                failed = true;
            }
        }
    }
    print_table(&rows);
    if rows.len() > 1 {
        if let Some(base) = rows.iter().find(|r| r.strategy == "stop-and-copy") {
            for r in rows.iter().filter(|r| r.strategy != "stop-and-copy") {
                println!(
                    "{}: downtime {:.2}x of stop-and-copy's ({:.1} vs {:.1} ms)",
                    r.strategy,
                    r.cost.downtime_ms / base.cost.downtime_ms.max(0.001),
                    r.cost.downtime_ms,
                    base.cost.downtime_ms
                );
            }
        }
    }
    if let Some(path) = cli.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => {
                if let Err(e) = std::fs::write(&path, text + "\n") {
                    eprintln!("error: writing {}: {e}", path.display());
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
