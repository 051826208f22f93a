//! Migrate a live process from one host to another and report the cost.
//!
//! ```text
//! migrate [--workload counter|memory:MIB] [--strategy stop-and-copy|page-server|lazy|all]
//!         [--transport tls|plain] [--json FILE]
//! ```
//!
//! The two hosts are network namespaces on this machine joined by a veth
//! pair; the images cross a real TCP connection between them, by default
//! with mutual TLS from throwaway certificates, through the same steps as
//! the two commands of `migrate_host` (for two real machines). The workload
//! writes a timestamped counter line about every millisecond to its own
//! file (and, with `memory:MIB`, keeps that much memory filled with a
//! pattern it verifies after the move). It runs as the init of its own PID
//! namespace, because on one machine both "hosts" share pid numbers and the
//! source copy keeps its pids until the destination has restored.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use criu::migrate::Strategy;
use criu_testkit::link::Security;
use criu_testkit::measure::migrate_workload_over;

mod cli;
use cli::{print_table, write_json, Bar};

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
    /// `tls` (mutual TLS with throwaway certificates, through the same
    /// steps as `migrate_host send`/`receive`) or `plain` TCP.
    #[arg(long, default_value = "tls")]
    transport: Security,
    /// How long the workload runs on host A before it is moved, in ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
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
        match migrate_workload_over(
            cli.transport,
            st,
            &cli.workload,
            mib,
            Duration::from_millis(cli.warmup_ms),
            Bar::new().callback(),
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
        if let Err(e) = write_json(&path, &rows) {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
