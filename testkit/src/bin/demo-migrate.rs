//! Migrate a live process from one host to another and report the cost.
//!
//! ```text
//! demo-migrate [--workload counter|memory:MIB|tcp-server[:MIB]]
//!              [--strategy stop-and-copy|page-server|lazy|pre-copy|registry|all] [--transport tls|plain]
//!              [--json FILE]
//! ```
//!
//! `tcp-server[:MIB]` moves a server with 8 clients connected from a third
//! host (see `criu_testkit::tcp`): its established connections and its
//! service address move with it, and a second table shows what the
//! clients saw (the longest stall, errors, reconnects, counters).
//!
//! The two hosts are network namespaces on this machine joined by a veth
//! pair; the images cross a real TCP connection between them, by default
//! with mutual TLS from throwaway certificates, through the same steps as
//! the two commands `criu-rs send` / `receive` (for two real machines). The workload
//! writes a timestamped counter line about every millisecond to its own
//! file (and, with `memory:MIB`, keeps that much memory filled with a
//! pattern it verifies after the move). It runs as the init of its own PID
//! namespace, because on one machine both "hosts" share pid numbers and the
//! source copy keeps its pids until the destination has restored.
//! `registry` moves the checkpoint as an OCI image through a real registry
//! (docker-registry) on a third network-namespace host: push on A, pull on B.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use criu::migrate::Strategy;
use criu_testkit::link::Security;
use criu_testkit::measure::migrate_workload_over;

use criu_testkit::demo::{finish, print_table, Bar};

#[derive(Parser)]
#[command(about = "Migrate a live process between two network-namespace hosts with CRIU")]
struct Cli {
    /// `counter`, `memory:MIB` for a counter holding MIB of patterned memory,
    /// or `tcp-server[:MIB]` for a server with clients connected.
    #[arg(long, default_value = "counter")]
    workload: String,
    /// `stop-and-copy`, `page-server`, `lazy`, `pre-copy`, `registry`, or `all` (each on a fresh workload).
    #[arg(long, default_value = "all")]
    strategy: String,
    /// Write one JSON object per strategy (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `tls` (mutual TLS with throwaway certificates, through the same
    /// steps as `criu-rs send`/`receive`) or `plain` TCP (the
    /// tcp-server workload is always plain).
    #[arg(long, default_value = "tls")]
    transport: Security,
    /// How long the workload runs on host A before it is moved, in ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// tcp-server: CRIU's network-lock method for the dump (iptables,
    /// nftables, skip; the migration holds its own lock on the service
    /// address either way).
    #[arg(long, default_value = "skip")]
    network_lock: String,
    /// tcp-server: the clients' minimum retransmission timeout towards
    /// the service, in ms (0: the kernel's 200 ms).
    #[arg(long, default_value_t = 0)]
    client_rto_min_ms: u64,
}

/// `--workload tcp-server[:MIB]`.
mod tcp_server {
    use std::process::ExitCode;
    use std::time::Duration;

    use criu::NetworkLock;
    use criu_testkit::tcp::run::{migrate_server, TcpSettings};
    use criu_testkit::tcp::table::print_clients;

    fn settings(cli: &super::Cli) -> Result<Vec<TcpSettings>, String> {
        let mib = match cli.workload.strip_prefix("tcp-server") {
            Some("") => 16,
            Some(m) => m
                .strip_prefix(':')
                .and_then(|m| m.parse().ok())
                .ok_or(format!(
                    "--workload tcp-server[:MIB], not {:?}",
                    cli.workload
                ))?,
            None => unreachable!("checked by the caller"),
        };
        let lock = match cli.network_lock.as_str() {
            "iptables" => NetworkLock::Iptables,
            "nftables" => NetworkLock::Nftables,
            "skip" => NetworkLock::Skip,
            l => return Err(format!("--network-lock iptables|nftables|skip, not {l:?}")),
        };
        let strategies = super::strategies(&cli.strategy)?;
        Ok(strategies
            .into_iter()
            .map(|st| {
                let mut s = TcpSettings::new(st, mib);
                s.network_lock = lock;
                s.client_rto_min = (cli.client_rto_min_ms > 0)
                    .then(|| Duration::from_millis(cli.client_rto_min_ms));
                s
            })
            .collect())
    }

    pub(super) fn main(cli: &super::Cli) -> ExitCode {
        let all = match settings(cli) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let (mut rows, mut failed) = (Vec::new(), false);
        for s in all {
            eprintln!(
                "migrating a tcp-server:{} with 8 clients, {}...",
                s.mib, s.strategy
            );
            match migrate_server(&s) {
                Ok(o) => match o.row {
                    Some(r) => {
                        failed |= !o.clients.clean() || !o.rules_left.is_empty() || o.hold_left;
                        rows.push(r);
                    }
                    None => {
                        eprintln!(
                            "error: {}: {}",
                            s.strategy,
                            o.error.map(|e| e.to_string()).unwrap_or_default()
                        );
                        failed = true;
                    }
                },
                Err(e) => {
                    eprintln!("error: {}: {e}", s.strategy);
                    failed = true;
                }
            }
        }
        let cost: Vec<_> = rows.iter().map(|r| r.row.clone()).collect();
        super::print_table(&cost);
        print_clients(&rows);
        super::finish(cli.json.as_deref(), &rows, failed)
    }
}

/// `all`, or one strategy.
fn strategies(s: &str) -> Result<Vec<Strategy>, String> {
    if s == "all" {
        return Ok(Strategy::ALL.to_vec());
    }
    Ok(vec![s.parse()?])
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.workload.starts_with("tcp-server") {
        return tcp_server::main(&cli);
    }
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
    let with_registry = matches!(cli.strategy.as_str(), "all" | "registry");
    let strategies: Vec<Strategy> = if cli.strategy == "all" {
        Strategy::ALL.to_vec()
    } else if cli.strategy == "registry" {
        Vec::new()
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
    let mut registry_cost = None;
    if with_registry {
        eprintln!(
            "migrating a {} workload through a registry...",
            cli.workload
        );
        // An uncompressed layer: gzip would add its time to the downtime.
        match criu_testkit::registry::migrate_via_registry(
            criu_testkit::registry::Compression::None,
            &cli.workload,
            mib,
            Duration::from_millis(cli.warmup_ms),
        ) {
            Ok((r, cost)) => {
                failed |= !r.continued || r.memory_intact == Some(false);
                rows.push(r);
                registry_cost = Some(cost);
            }
            Err(e) => {
                eprintln!("error: registry: {e}");
                failed = true;
            }
        }
    }
    print_table(&rows);
    if let Some(c) = registry_cost {
        println!(
            "registry: push {:.1} ms + pull {:.1} ms of a {:.2} MiB image (pack {:.1} ms, unpack {:.1} ms)",
            c.push_ms,
            c.pull_ms,
            c.image_bytes as f64 / 1048576.0,
            c.pack_ms,
            c.unpack_ms
        );
    }
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
    finish(cli.json.as_deref(), &rows, failed)
}
