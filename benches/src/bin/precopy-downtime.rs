//! Downtime of pre-copy against stop-and-copy, for a workload that keeps
//! rewriting its memory: `criu-rs-precopy-workload` with `MIB` MiB (first
//! argument, default 256) rewriting 4 pseudo-random pages a millisecond
//! (16 MiB/s), moved between two network-namespace hosts of this machine
//! with `criu::migrate`, the two strategies interleaved, `REPS` runs each
//! (second argument, default 5). Downtime is the source report's
//! `stopped_to_restored`: from the tree stopped to the destination's
//! restore. Both sides' images are in the crate's own directories in
//! memory (the default), so the source frees its pages once sent; with a
//! third argument `kept`, each repetition also moves the workload with
//! both strategies with work directories on tmpfs, which keep the images
//! whole (the before of that freeing). Every restored copy checks every
//! word of its memory. (`make bench`'s
//! migration step measures the same pair, interleaved with the rest.)
//!
//! Run as root: `cargo run --release -p criu-rs-benches --bin
//! precopy-downtime -- 256 5 [kept]`. Needs CRIU that tracks memory (soft-dirty,
//! or the set-up's userfaultfd patch).

use std::time::Duration;

use criu::migrate::Strategy;
use criu_testkit::hosts::TwoHosts;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let reps: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let compare_kept = args.next().is_some_and(|a| a == "kept");
    if !criu::Criu::new().feature_check()?.mem_track {
        return Err("CRIU cannot track memory here: pre-copy cannot run (make setup)".into());
    }
    println!(
        "{mib} MiB rewritten at 16 MiB/s, {reps} runs per strategy, interleaved; load {}",
        load()
    );
    let hosts = TwoHosts::new()?;
    let mut runs = vec![(Strategy::StopAndCopy, false), (Strategy::PreCopy, false)];
    if compare_kept {
        runs.extend([(Strategy::StopAndCopy, true), (Strategy::PreCopy, true)]);
    }
    let mut downtimes = vec![Vec::new(); runs.len()];
    for rep in 0..reps {
        for (i, &(strategy, keep)) in runs.iter().enumerate() {
            let r = criu_rs_benches::migrate_writing(&hosts, strategy, mib, keep)?;
            let written = r.dump.stats.as_ref().map_or(0, |s| s.bytes_written() >> 20);
            let p = &r.phases;
            println!(
                "run {rep} {:>21}: downtime {:>6} ms (transfer {} ms, restore {} ms), \
                 final dump wrote {written} MiB, total {:>6} ms",
                name(strategy, keep),
                r.stopped_to_restored.as_millis(),
                p.transfer.as_millis(),
                p.restore.as_millis(),
                r.total.as_millis()
            );
            downtimes[i].push(r.stopped_to_restored);
        }
    }
    let medians: Vec<Duration> = downtimes.iter_mut().map(|d| median(d)).collect();
    for (i, &(strategy, keep)) in runs.iter().enumerate() {
        println!(
            "median downtime {}: {} ms",
            name(strategy, keep),
            medians[i].as_millis()
        );
    }
    for pair in medians.chunks(2) {
        let ratio = pair[0].as_secs_f64() / pair[1].as_secs_f64().max(1e-9);
        println!("stop-and-copy / pre-copy: {ratio:.2}x (target >= 4x at 1 GiB)");
    }
    println!("load {}", load());
    Ok(())
}

/// A row's name: the strategy, and whether its images were kept.
fn name(strategy: Strategy, keep: bool) -> String {
    match keep {
        true => format!("{strategy} (kept)"),
        false => format!("{strategy} (freed)"),
    }
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
