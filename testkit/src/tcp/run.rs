//! One migration of the server with its clients connected, between fresh
//! three-host topologies: shared by `examples/migrate --workload
//! tcp-server`, the tests and the benchmark.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use criu::migrate::{Connections, DestConfig, SourceConfig, Strategy};
use criu::NetworkLock;
use serde::Serialize;

use super::client::{ClientReport, Clients};
use super::topology::ThreeHosts;
use super::{server_bin, SERVICE_PORT};
use crate::container::BoxError;
use crate::hosts::netns_of;
use crate::measure::{rss_bytes, Cost, Row};
use crate::{built_bin, continued_past, longest_gap_ns, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// The strategy.
    pub strategy: Strategy,
    /// MiB of memory the server keeps.
    pub mib: usize,
    /// Client connections.
    pub connections: usize,
    /// Each connection's pause between an answer and its next request.
    pub interval: Duration,
    /// CRIU's network-lock method for the dump.
    pub network_lock: NetworkLock,
    /// The client's minimum retransmission timeout towards the service
    /// (None: the kernel's 200 ms).
    pub client_rto_min: Option<Duration>,
    /// Answers every connection must have had before the migration.
    pub warmup_answers: u64,
    /// Restore without `tcp_established`, which CRIU refuses: the failed
    /// restore path.
    pub fail_restore: bool,
    /// Give the hook an `iptables-restore` that does not exist: the path
    /// where the lock cannot be taken.
    pub break_lock: bool,
}

impl TcpSettings {
    /// 8 connections, a request every 5 ms, CRIU's lock skipped (the
    /// hook's lock is the external one), no faults.
    pub fn new(strategy: Strategy, mib: usize) -> TcpSettings {
        TcpSettings {
            strategy,
            mib,
            connections: 8,
            interval: Duration::from_millis(5),
            network_lock: NetworkLock::Skip,
            client_rto_min: None,
            warmup_answers: 20,
            fail_restore: false,
            break_lock: false,
        }
    }
}

/// The published row: the usual cost and what the clients saw.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRow {
    /// The usual migration cost (`downtime_ms` is the server's own).
    #[serde(flatten)]
    pub row: Row,
    /// CRIU's network-lock method (`iptables`, `nftables`, `skip`).
    pub network_lock: String,
    /// The client's minimum RTO towards the service, if set.
    pub client_rto_min_ms: Option<u64>,
    /// What the clients saw.
    pub clients: ClientReport,
    /// The clients' longest stall over the server's downtime.
    pub stall_to_downtime: f64,
}

/// How a migration ended, and what was left.
#[derive(Debug)]
pub struct TcpOutcome {
    /// The row, when the migration succeeded.
    pub row: Option<TcpRow>,
    /// The migration's error (the source side's), when it failed.
    pub error: Option<criu::Error>,
    /// What the clients saw (also when the migration failed).
    pub clients: ClientReport,
    /// Whether the server answered on host `a` (it stayed) or `b`.
    pub served_from_b: bool,
    /// The service address on `a` and on `b` at the end.
    pub service_on: (bool, bool),
    /// Firewall rules left on `a` and `b`.
    pub rules_left: Vec<String>,
    /// Whether the router's hold on the service's packets was left in
    /// place (its route or placeholder neighbour).
    pub hold_left: bool,
    /// The namespaces the topology made (gone once this is returned).
    pub namespaces: Vec<String>,
}

/// Starts the server on host `a` as the init of its own PID namespace.
fn spawn_server(hosts: &ThreeHosts, out: &Path, mib: usize) -> Result<Workload, BoxError> {
    let bin = built_bin(server_bin())?;
    let listen = SocketAddr::new(hosts.service.into(), SERVICE_PORT).to_string();
    let w = hosts.pair.a.run(|| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--pid", "--fork", "--", "setsid"])
            .arg(&bin)
            .arg(out)
            .args(["--listen", &listen, "--memory-mib", &mib.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Workload::start_wrapped(cmd, out, mib)
    })??;
    Ok(w)
}

/// Runs one migration of the server with its clients connected.
pub fn migrate_server(s: &TcpSettings) -> Result<TcpOutcome, BoxError> {
    let dir = tempfile::Builder::new().prefix("criu-rs-tcp-").tempdir()?;
    let hosts = ThreeHosts::new(s.client_rto_min)?;
    let mut w = spawn_server(&hosts, &dir.path().join("server.log"), s.mib)?;
    let target = SocketAddr::new(hosts.service.into(), SERVICE_PORT);
    let clients = Clients::start(&hosts.client, target, s.connections, s.interval)?;
    clients.wait_for_answers(s.warmup_answers, Duration::from_secs(30))?;
    let (pid_before, source_netns) = (w.pid(), netns_of(w.pid())?);
    let rss = rss_bytes(pid_before);
    let (src_dir, dst_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&src_dir)?;
    std::fs::create_dir_all(&dst_dir)?;
    let mut hook = hosts.address_move();
    if s.break_lock {
        hook = hook.iptables_restore("/nonexistent/iptables-restore");
    }
    let run = hosts.pair.migrate(
        pid_before,
        || {
            SourceConfig::new(s.strategy)
                .work_dir(&src_dir)
                .connections(Connections::new(s.network_lock, hook))
        },
        || {
            DestConfig::new()
                .work_dir(&dst_dir)
                .tcp_established(!s.fail_restore)
        },
        None,
    )?;
    let moved = match (run.src, run.dst) {
        (Ok(src), Ok(dst)) => {
            w.reap(Duration::from_secs(10))?;
            Some((src, dst))
        }
        (Err(e), _) => {
            let clients = finish_clients(clients)?;
            return outcome_failed(&hosts, &mut w, e, clients);
        }
        (Ok(_), Err(e)) => {
            return Err(format!("the source succeeded, the destination failed: {e}").into())
        }
    };
    let (src, dst) = moved.expect("both sides succeeded");
    let pid_after = dst.child.pid();
    let dest_netns = netns_of(pid_after)?;
    let seq_at_stop = w.last_seq();
    w.wait_for_seq(seq_at_stop + 100, Duration::from_secs(60))?;
    let clients = finish_clients(clients)?;
    let ticks = w.ticks();
    let continued = continued_past(&ticks, seq_at_stop);
    let downtime_ms = longest_gap_ns(&ticks) as f64 / 1e6;
    let of = Row::of(&src, "plain", &format!("tcp-server:{}", s.mib));
    let row = Row {
        cost: Cost {
            rss_bytes: rss,
            downtime_ms,
            ..of.cost
        },
        continued,
        memory_intact: Some(clients.checksums_ok),
        pid_before,
        pid_after,
        source_netns,
        dest_netns,
        ..of
    };
    let end = leftovers(&hosts)?;
    let hold_left = hosts.hold_left()?;
    drop(dst.child);
    let namespaces = hosts.namespaces();
    drop(hosts);
    Ok(TcpOutcome {
        row: Some(TcpRow {
            stall_to_downtime: clients.longest_stall_ms / downtime_ms.max(0.001),
            row,
            network_lock: lock_name(s.network_lock).into(),
            client_rto_min_ms: s.client_rto_min.map(|d| d.as_millis() as u64),
            clients: clients.clone(),
        }),
        error: None,
        clients,
        served_from_b: true,
        service_on: end.1,
        rules_left: end.0,
        hold_left,
        namespaces,
    })
}

/// After a failed migration: the server must run on in `a`, with its
/// clients.
fn outcome_failed(
    hosts: &ThreeHosts,
    w: &mut Workload,
    error: criu::Error,
    clients: ClientReport,
) -> Result<TcpOutcome, BoxError> {
    let still_a = w.is_running() && netns_of(w.pid())? == hosts.pair.a.netns_inode()?;
    let (rules_left, service_on) = leftovers(hosts)?;
    Ok(TcpOutcome {
        row: None,
        error: Some(error),
        clients,
        served_from_b: !still_a,
        service_on,
        rules_left,
        hold_left: hosts.hold_left()?,
        namespaces: hosts.namespaces(),
    })
}

/// Lets every connection have 50 more answers, then stops the clients.
fn finish_clients(clients: Clients) -> Result<ClientReport, BoxError> {
    let now = clients.min_answers();
    let waited = clients.wait_for_answers(now + 50, Duration::from_secs(60));
    let report = ClientReport::of(&clients.stop());
    waited.map_err(|e| format!("{e}; the clients saw {report:?}"))?;
    Ok(report)
}

/// Firewall rules left on `a` and `b`, and where the service address is.
fn leftovers(hosts: &ThreeHosts) -> Result<(Vec<String>, (bool, bool)), BoxError> {
    let mut rules = ThreeHosts::firewall_rules(&hosts.pair.a)?;
    rules.extend(ThreeHosts::firewall_rules(&hosts.pair.b)?);
    let on = |h| ThreeHosts::addresses(h).map(|a| a.contains(&hosts.service));
    Ok((rules, (on(&hosts.pair.a)?, on(&hosts.pair.b)?)))
}

/// The name of a lock method, as CRIU spells it.
pub fn lock_name(l: NetworkLock) -> &'static str {
    match l {
        NetworkLock::Iptables => "iptables",
        NetworkLock::Nftables => "nftables",
        _ => "skip",
    }
}
