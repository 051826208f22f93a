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
use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu_testkit::hosts::{netns_of, TwoHosts};
use criu_testkit::{workload_bin, Workload};
use serde::Serialize;

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

/// One migration's cost, with the field names the project publishes.
#[derive(Debug, Serialize)]
struct Row {
    strategy: String,
    workload: String,
    rss_bytes: u64,
    freezing_time_us: Option<u64>,
    frozen_time_us: Option<u64>,
    memdump_time_us: Option<u64>,
    memwrite_time_us: Option<u64>,
    pages_written: Option<u64>,
    dump_ms: f64,
    transfer_bytes: u64,
    transfer_ms: f64,
    restore_ms: f64,
    restore_time_us: Option<u64>,
    downtime_ms: f64,
    continued: bool,
    memory_intact: Option<bool>,
    pid_before: i32,
    pid_after: i32,
    source_netns: u64,
    dest_netns: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
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

fn run_one(
    strategy: Strategy,
    workload: &str,
    mib: usize,
    warmup: Duration,
) -> Result<Row, Box<dyn std::error::Error>> {
    let bin = workload_bin();
    if !bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build -p criu-testkit --bins` first",
            bin.display()
        )
        .into());
    }
    let dir = tempfile::Builder::new()
        .prefix("criu-rs-migrate-")
        .tempdir()?;
    let hosts = TwoHosts::new()?;
    let out = dir.path().join("counter.log");
    let mut w = hosts
        .a
        .run(|| Workload::spawn_in_pid_ns(&bin, &out, Duration::from_millis(1), mib))??;
    let checksum = w.memory_checksum();
    std::thread::sleep(warmup);
    let pid_before = w.pid();
    let rss = rss_bytes(pid_before);
    let source_netns = netns_of(pid_before)?;
    let (src_dir, dst_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&src_dir)?;
    std::fs::create_dir_all(&dst_dir)?;

    let run = hosts.migrate(
        pid_before,
        || {
            let mut bar = Bar {
                start: Instant::now(),
                bar: None,
            };
            SourceConfig::new(strategy, &src_dir)
                .progress(move |done, total| bar.update(done, total))
        },
        || DestConfig::new(&dst_dir),
        None,
    )?;
    let (src, dst) = (run.src, run.dst);
    let src = src?;
    let dst = dst?;
    w.reap(Duration::from_secs(10))?;
    let seq_at_stop = w.last_seq();
    let pid_after = dst.child.pid();
    let dest_netns = netns_of(pid_after)?;
    w.wait_for_seq(seq_at_stop + 200, Duration::from_secs(60))?;
    let ticks = w.ticks();
    let continued = ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1)
        && ticks.len() as u64 > seq_at_stop;
    let downtime_ns = ticks
        .windows(2)
        .map(|p| p[1].unix_ns.saturating_sub(p[0].unix_ns))
        .max()
        .unwrap_or(0);
    let memory_intact = if mib > 0 {
        let (sum, ok) = w.verify_memory(pid_after, Duration::from_secs(120))?;
        Some(ok && Some(sum) == checksum)
    } else {
        None
    };
    drop(dst.child);

    let stats = src.dump.stats;
    let us = |f: fn(&criu::DumpStats) -> Duration| stats.as_ref().map(|s| f(s).as_micros() as u64);
    Ok(Row {
        strategy: strategy.to_string(),
        workload: workload.to_string(),
        rss_bytes: rss,
        freezing_time_us: us(|s| s.freezing_time),
        frozen_time_us: us(|s| s.frozen_time),
        memdump_time_us: us(|s| s.memdump_time),
        memwrite_time_us: us(|s| s.memwrite_time),
        pages_written: stats.map(|s| s.pages_written),
        dump_ms: ms(src.dump.wall_time),
        transfer_bytes: src.transfer.bytes + src.page_server_bytes,
        transfer_ms: ms(src.transfer.elapsed),
        restore_ms: ms(src.restore_wall),
        restore_time_us: src.restore_time_us,
        downtime_ms: downtime_ns as f64 / 1e6,
        continued,
        memory_intact,
        pid_before,
        pid_after,
        source_netns,
        dest_netns,
    })
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
            r.rss_bytes as f64 / 1048576.0,
            r.dump_ms,
            opt(r.frozen_time_us, 1000.0),
            r.transfer_bytes as f64 / 1048576.0,
            r.transfer_ms,
            r.restore_ms,
            r.downtime_ms,
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
        match run_one(st, &cli.workload, mib, Duration::from_millis(cli.warmup_ms)) {
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
                    r.downtime_ms / base.downtime_ms.max(0.001),
                    r.downtime_ms,
                    base.downtime_ms
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
