//! Downtime of pre-copy against stop-and-copy, for a workload that keeps
//! rewriting its memory: `criu-rs-precopy-workload` with `MIB` MiB (first
//! argument, default 256) rewriting 4 pseudo-random pages a millisecond
//! (16 MiB/s), moved between two network-namespace hosts of this machine
//! with `criu::migrate`, the two strategies interleaved, `REPS` runs each
//! (second argument, default 5). Downtime is the source report's
//! `stopped_to_restored`: from the tree stopped to the destination's
//! restore. Every restored copy checks every word of its memory.
//!
//! Run as root: `cargo run --release -p criu-rs-benches --bin
//! precopy-downtime -- 256 5`. Needs CRIU that tracks memory (soft-dirty,
//! or the set-up's userfaultfd patch).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, SourceReport, Strategy};
use criu_testkit::hosts::TwoHosts;
use criu_testkit::{built_bin, find_bin, Workload};

const WAIT: Duration = Duration::from_secs(120);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let reps: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    if !criu::Criu::new().feature_check()?.mem_track {
        return Err("CRIU cannot track memory here: pre-copy cannot run (make setup)".into());
    }
    println!(
        "{mib} MiB rewritten at 16 MiB/s, {reps} runs per strategy, interleaved; load {}",
        load()
    );
    let hosts = TwoHosts::new()?;
    let mut downtimes = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for (i, strategy) in [Strategy::StopAndCopy, Strategy::PreCopy]
            .into_iter()
            .enumerate()
        {
            let r = run(&hosts, strategy, mib)?;
            let written = r.dump.stats.as_ref().map_or(0, |s| s.bytes_written() >> 20);
            let p = &r.phases;
            println!(
                "run {rep} {strategy:>13}: downtime {:>6} ms (transfer {} ms, restore {} ms), \
                 final dump wrote {written} MiB, total {:>6} ms",
                r.stopped_to_restored.as_millis(),
                p.transfer.as_millis(),
                p.restore.as_millis(),
                r.total.as_millis()
            );
            downtimes[i].push(r.stopped_to_restored);
        }
    }
    let (sc, pc) = (median(&mut downtimes[0]), median(&mut downtimes[1]));
    println!(
        "median downtime: stop-and-copy {} ms, pre-copy {} ms, ratio {:.1}x; load {}",
        sc.as_millis(),
        pc.as_millis(),
        sc.as_secs_f64() / pc.as_secs_f64().max(1e-9),
        load()
    );
    Ok(())
}

/// One migration of a fresh workload with `strategy`; the restored copy
/// must check out word for word.
fn run(
    hosts: &TwoHosts,
    strategy: Strategy,
    mib: usize,
) -> Result<SourceReport, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir_in("/dev/shm")?;
    let mut w = workload(hosts, &dir.path().join("out.log"), mib)?;
    w.wait_for_seq(w.last_seq() + 200, WAIT)?;
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir)?;
    std::fs::create_dir_all(&dst_dir)?;
    let m = hosts.migrate(
        w.pid(),
        || SourceConfig::new(strategy).work_dir(&src_dir),
        || DestConfig::new().work_dir(&dst_dir),
        None,
    )?;
    let (src, dst) = (m.src?, m.dst?);
    w.reap(WAIT)?;
    w.forget();
    let (_, ok) = w.verify_memory(dst.child.pid(), WAIT)?;
    if !ok {
        return Err(format!("{strategy}: the restored memory is wrong").into());
    }
    Ok(src)
}

/// The workload in its own PID namespace on host a.
fn workload(
    hosts: &TwoHosts,
    out: &Path,
    mib: usize,
) -> Result<Workload, Box<dyn std::error::Error>> {
    let bin = built_bin(find_bin(
        "criu-rs-precopy-workload",
        "CRIU_RS_PRECOPY_WORKLOAD_BIN",
    ))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--", "setsid"])
        .arg(bin)
        .arg(out)
        .args(["--interval-us", "1000", "--pages-per-tick", "4"])
        .arg("--memory-mib")
        .arg(mib.to_string());
    Ok(hosts.a.run(|| Workload::start_wrapped(cmd, out, mib))??)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The load averages (1, 5, 15 minutes).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
