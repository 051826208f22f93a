//! The cost of mutual TLS on migration: for each strategy and size, plain
//! and TLS runs interleaved (plain, tls, plain, tls...) so that both see
//! the same machine load, through the steps of `examples/migrate_host`.
//! Reports the median application-observed downtime of each, their ratio
//! (target: TLS at most 1.25x plain), and the image stream's throughput
//! (stop-and-copy carries all memory on it; page-server and lazy carry
//! memory on CRIU's own connections, so their stream figure is small).
//! Writes `target/criu-rs-bench/tls.json`.
//!
//! Sizes: `CRIU_RS_BENCH_MIGRATION_SIZES` (MiB, default `16`); reps:
//! `CRIU_RS_BENCH_REPS` (default 3; the target's is 5).

use std::time::Duration;

use criu::migrate::Strategy;
use criu_rs_benches::{median, migration_sizes, out_dir, reps};
use criu_testkit::link::Security;
use criu_testkit::measure::{migrate_workload_over, Row};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Side {
    downtime_ms: Vec<f64>,
    median_downtime_ms: f64,
    /// The image stream's MiB/s (bytes on the stream over its time), for
    /// stop-and-copy, the one strategy whose memory all crosses the stream
    /// (the others' rows count CRIU's own connections' bytes too).
    median_stream_mib_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    strategy: String,
    mib: usize,
    runs: usize,
    plain: Side,
    tls: Side,
    tls_over_plain_downtime: f64,
}

fn run(security: Security, strategy: Strategy, mib: usize) -> Row {
    let what = format!("{strategy} {mib} MiB {security:?}");
    match migrate_workload_over(
        security,
        strategy,
        &format!("memory:{mib}"),
        mib,
        Duration::from_millis(300),
        |_, _| {},
    ) {
        Ok(r) if r.continued && r.memory_intact == Some(true) => r,
        Ok(r) => panic!("{what}: the workload did not continue intact: {r:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn side(strategy: Strategy, rows: &[Row]) -> Side {
    let down: Vec<f64> = rows.iter().map(|r| r.cost.downtime_ms).collect();
    let mut rate: Vec<f64> = rows
        .iter()
        .map(|r| {
            let stream = r.cost.transfer_bytes as f64 / 1048576.0;
            stream / (r.cost.transfer_ms.max(0.01) / 1000.0)
        })
        .collect();
    Side {
        median_downtime_ms: median(&mut down.clone()),
        downtime_ms: down,
        median_stream_mib_s: (strategy == Strategy::StopAndCopy).then(|| median(&mut rate)),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps = reps();
    let mut out = Vec::new();
    for mib in migration_sizes() {
        for strategy in Strategy::ALL {
            let (mut plain, mut tls) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                plain.push(run(Security::Plain, strategy, mib));
                tls.push(run(Security::Tls, strategy, mib));
            }
            let (p, t) = (side(strategy, &plain), side(strategy, &tls));
            let ratio = t.median_downtime_ms / p.median_downtime_ms.max(0.001);
            eprintln!("tls {strategy} {mib} MiB: downtime {ratio:.2}x of plain");
            out.push(Summary {
                strategy: strategy.to_string(),
                mib,
                runs: reps,
                plain: p,
                tls: t,
                tls_over_plain_downtime: ratio,
            });
        }
    }
    print_summary(&out);
    std::fs::write(
        out_dir().join("tls.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
}

fn print_summary(rows: &[Summary]) {
    println!(
        "{:<14} {:>6} {:>5} {:>16} {:>14} {:>10} {:>16} {:>14}",
        "strategy",
        "MiB",
        "runs",
        "plain down ms",
        "tls down ms",
        "tls/plain",
        "plain MiB/s",
        "tls MiB/s"
    );
    for r in rows {
        let rate = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        println!(
            "{:<14} {:>6} {:>5} {:>16.1} {:>14.1} {:>9.2}x {:>16} {:>14}",
            r.strategy,
            r.mib,
            r.runs,
            r.plain.median_downtime_ms,
            r.tls.median_downtime_ms,
            r.tls_over_plain_downtime,
            rate(r.plain.median_stream_mib_s),
            rate(r.tls.median_stream_mib_s)
        );
    }
}
