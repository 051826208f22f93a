//! Migration cost by strategy and memory size: the application-observed
//! downtime, the whole migration's time and the bytes on the wire, as
//! medians over `CRIU_RS_BENCH_REPS` runs. Prints a table with ratios,
//! writes `target/criu-rs-bench/migration.json` and a plot of downtime
//! versus size per strategy, `target/criu-rs-bench/downtime.svg`.
//!
//! Each run also reports where the downtime went (the `phases` of
//! `testkit::measure::Row`); their medians go into `migration.json` for
//! `bench-report`'s stacked-bar plot. Beside the strategies, each
//! repetition measures a local baseline interleaved with them: a dump of
//! the same workload to tmpfs plus a restore from it on the same host
//! (`local-tmpfs`), the floor a stop-and-copy migration is held against.
//! The strategies (each over each transport) and the baseline run in an
//! order rotated by one place per repetition, so that no row always
//! follows the same one.
//!
//! Sizes: `CRIU_RS_BENCH_MIGRATION_SIZES` (MiB, default `16`; the
//! published run uses `16,256,1024`). Strategies:
//! `CRIU_RS_BENCH_STRATEGIES` (comma-separated names, default all; the
//! local baseline always runs). Transports: `CRIU_RS_BENCH_TRANSPORTS`
//! (`plain`, `tls` or both, default `plain`); TLS rows are named
//! `STRATEGY/tls`. `CRIU_RS_BENCH_REGISTRY=1` adds the registry route
//! (checkpoint pushed to a registry on a third host, pulled on the
//! destination): row `registry` through criu-oci's strategy, whose pull
//! starts during the push, and row `registry-sequential` through
//! `criu_oci::migrate`, which pulls once the push has ended (the
//! strategy's way before issue #27 item 3). Every repetition runs each of them once, in that order,
//! so that the ratios below come from one interleaved run.
//!
//! Where CRIU can track memory (soft-dirty, or the set-up's userfaultfd
//! patch), each repetition also moves issue #28's writing workload
//! (`criu-rs-precopy-workload` rewriting 16 MiB/s of its memory) with
//! stop-and-copy and with pre-copy, over plain TCP, images in memory:
//! rows `stop-and-copy+writes` and `pre-copy+writes`, whose downtime is
//! the source report's `stopped_to_restored`. `CRIU_RS_BENCH_PRECOPY=0`
//! leaves them out.
//!
//! `CRIU_RS_BENCH_LAZY_RESTORE=1` adds stop-and-copy with the destination
//! restoring lazily from the received images
//! (`DestConfig::restore_lazily`), row `stop-and-copy+lazy-restore`.
//!
//! After the table, `targets` prints each target of issue #27 as a ratio
//! of medians with its verdict: stop-and-copy over a local dump + restore
//! on tmpfs (<= 1.3x at 1 GiB), TLS over plain per strategy (<= 1.15x or
//! at most 10 ms more), page-server over stop-and-copy (<= 0.8x at 256
//! MiB and above, below 1x under that), registry over stop-and-copy
//! (<= 1.5x at 256 MiB and above); and issue #28's: pre-copy's downtime
//! over stop-and-copy's for the writing workload (<= 0.25x, 4x below, at
//! 1 GiB).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criu::migrate::Strategy;
use criu::{Criu, ImagesDir, Options};
use criu_rs_benches::{
    become_subreaper, median, migration_sizes, out_dir, reps, strategies, workload, Fs,
};
use criu_testkit::link::Security;
use criu_testkit::measure::{migrate_workload_over, migrate_workload_with};
use plotters::prelude::*;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Summary {
    strategy: String,
    mib: usize,
    runs: usize,
    downtime_ms: Vec<f64>,
    median_downtime_ms: f64,
    median_total_ms: f64,
    median_transfer_bytes: f64,
    /// The slowest run's downtime over the fastest's.
    downtime_spread: f64,
    /// Median of each phase of the downtime, ms (see `testkit::measure`).
    phases_ms: BTreeMap<String, f64>,
}

/// The name of the local baseline in the summary.
const LOCAL: &str = "local-tmpfs";
/// The rows of issue #28's writing workload.
const SC_WRITES: &str = "stop-and-copy+writes";
const PC_WRITES: &str = "pre-copy+writes";

/// One run's figures, whatever produced them.
#[derive(Default)]
struct Runs {
    down: Vec<f64>,
    total: Vec<f64>,
    bytes: Vec<f64>,
    phases: BTreeMap<String, Vec<f64>>,
}

impl Runs {
    fn summary(mut self, strategy: &str, mib: usize) -> Summary {
        let all = self.down.clone();
        let (lo, hi) = all
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        Summary {
            strategy: strategy.to_string(),
            mib,
            runs: all.len(),
            downtime_ms: all,
            median_downtime_ms: median(&mut self.down),
            median_total_ms: median(&mut self.total),
            median_transfer_bytes: median(&mut self.bytes),
            downtime_spread: if lo > 0.0 { hi / lo } else { f64::NAN },
            phases_ms: self
                .phases
                .into_iter()
                .map(|(k, mut v)| (k, median(&mut v)))
                .collect(),
        }
    }

    /// A migration's figures from the source's report (the pre-copy pair).
    fn add_source_report(&mut self, r: &criu::migrate::SourceReport) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.down.push(ms(r.stopped_to_restored));
        self.total.push(ms(r.total));
        self.bytes.push(r.transfer.bytes as f64);
        self.add_phases(&serde_json::to_value(r.phases).unwrap_or_default());
    }

    /// Phases from JSON fields `<name>_us`.
    fn add_phases(&mut self, v: &serde_json::Value) {
        if let Some(obj) = v.as_object() {
            for (k, us) in obj {
                if let Some(us) = us.as_f64() {
                    let name = k.trim_end_matches("_us").to_string();
                    self.phases.entry(name).or_default().push(us / 1000.0);
                }
            }
        }
    }

    /// A migration's figures; its phases come from the row's JSON, in µs.
    fn add_migration(&mut self, r: &criu_testkit::measure::Row, total: Duration) {
        self.down.push(r.cost.downtime_ms);
        self.total.push(total.as_secs_f64() * 1000.0);
        self.bytes.push(r.cost.transfer_bytes as f64);
        let v = serde_json::to_value(r).unwrap_or_default();
        self.add_phases(&v["phases"]);
    }

    /// The local baseline's figures: its dump and its restore.
    fn add_local(&mut self, dump: Duration, restore: Duration) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.down.push(ms(dump + restore));
        self.total.push(ms(dump + restore));
        self.bytes.push(0.0);
        self.phases.entry("dump".into()).or_default().push(ms(dump));
        self.phases
            .entry("restore".into())
            .or_default()
            .push(ms(restore));
    }
}

/// Whether the pre-copy pair runs: CRIU can track memory, and
/// `CRIU_RS_BENCH_PRECOPY` is not `0`. Says so when it cannot.
fn with_precopy() -> bool {
    if std::env::var("CRIU_RS_BENCH_PRECOPY").is_ok_and(|v| v == "0") {
        return false;
    }
    let track = Criu::new().feature_check().is_ok_and(|f| f.mem_track);
    if !track {
        eprintln!(
            "migration: CRIU cannot track memory here, so issue #28's pre-copy pair is not              measured (make setup builds CRIU with the userfaultfd patch)"
        );
    }
    track
}

/// The transports of the run (`CRIU_RS_BENCH_TRANSPORTS`, default plain).
fn transports() -> Vec<Security> {
    let raw = std::env::var("CRIU_RS_BENCH_TRANSPORTS").unwrap_or_default();
    let mut v = Vec::new();
    if raw.contains("plain") || !raw.contains("tls") {
        v.push(Security::Plain);
    }
    if raw.contains("tls") {
        v.push(Security::Tls);
    }
    v
}

/// The row of stop-and-copy restored lazily on the destination
/// (`DestConfig::restore_lazily`), run when `CRIU_RS_BENCH_LAZY_RESTORE=1`.
const SC_LAZY: &str = "stop-and-copy+lazy-restore";

/// Whether stop-and-copy restored lazily runs too
/// (`CRIU_RS_BENCH_LAZY_RESTORE=1`).
fn with_lazy_restore() -> bool {
    std::env::var("CRIU_RS_BENCH_LAZY_RESTORE").is_ok_and(|v| v == "1")
}

/// The registry route pulling only once the push has ended.
const REG_SEQ: &str = "registry-sequential";

/// Whether the registry route runs too (`CRIU_RS_BENCH_REGISTRY=1`).
fn with_registry() -> bool {
    std::env::var("CRIU_RS_BENCH_REGISTRY").is_ok_and(|v| v == "1")
}

/// A row's name: the strategy, with `/tls` for the TLS transport.
fn row_name(strategy: Strategy, security: Security) -> String {
    match security {
        Security::Tls => format!("{strategy}/tls"),
        _ => strategy.to_string(),
    }
}

/// The median downtime of row `name` at `mib`, if measured.
fn down(rows: &[Summary], name: &str, mib: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.mib == mib && r.strategy == name)
        .map(|r| r.median_downtime_ms)
}

/// One target line: `a / b` with the limit and its verdict; `slack_ms`
/// also accepts `a` at most that much above `b`.
fn target_line(what: &str, a: f64, b: f64, limit: f64, slack_ms: Option<f64>) {
    let ratio = a / b.max(0.001);
    if limit.is_infinite() {
        println!(
            "  {what}: {a:.1} / {b:.1} ms = {ratio:.2}x ({:+.1} ms); no target at this size",
            a - b
        );
        return;
    }
    let met = ratio <= limit || slack_ms.is_some_and(|s| a - b <= s);
    let slack = slack_ms.map_or(String::new(), |s| format!(" or <= +{s:.0} ms"));
    println!(
        "  {what}: {a:.1} / {b:.1} ms = {ratio:.2}x ({:+.1} ms); target <= {limit:.2}x{slack}: {}",
        a - b,
        if met { "met" } else { "MISSED" }
    );
}

/// Each target of issue #27 as a ratio of this run's medians.
fn print_targets(rows: &[Summary]) {
    let runs = rows.iter().map(|r| r.runs).max().unwrap_or(0);
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.mib).collect();
    sizes.dedup();
    println!("targets (downtime, medians of {runs}, one interleaved run):");
    let tls = |s: Strategy| row_name(s, Security::Tls);
    let sc = Strategy::StopAndCopy;
    for &mib in &sizes {
        for name in [sc.to_string(), tls(sc), SC_LAZY.to_string()] {
            if let (Some(a), Some(b)) = (down(rows, &name, mib), down(rows, LOCAL, mib)) {
                let limit = if mib >= 1024 { 1.3 } else { f64::INFINITY };
                target_line(&format!("{name} / {LOCAL} at {mib} MiB"), a, b, limit, None);
            }
        }
        for s in Strategy::ALL {
            if let (Some(a), Some(b)) = (down(rows, &tls(s), mib), down(rows, &s.to_string(), mib))
            {
                target_line(
                    &format!("{s} tls / plain at {mib} MiB"),
                    a,
                    b,
                    1.15,
                    Some(10.0),
                );
            }
        }
        let ps = Strategy::PageServer;
        for (a, b) in [(ps.to_string(), sc.to_string()), (tls(ps), tls(sc))] {
            if let (Some(x), Some(y)) = (down(rows, &a, mib), down(rows, &b, mib)) {
                let limit = if mib >= 256 { 0.8 } else { 0.999 };
                target_line(&format!("{a} / {b} at {mib} MiB"), x, y, limit, None);
            }
        }
        if let (Some(a), Some(b)) = (
            down(rows, "registry", mib),
            down(rows, &sc.to_string(), mib),
        ) {
            let limit = if mib >= 256 { 1.5 } else { f64::INFINITY };
            target_line(&format!("registry / {sc} at {mib} MiB"), a, b, limit, None);
        }
        if let (Some(a), Some(b)) = (down(rows, REG_SEQ, mib), down(rows, &sc.to_string(), mib)) {
            target_line(
                &format!("{REG_SEQ} / {sc} at {mib} MiB"),
                a,
                b,
                f64::INFINITY,
                None,
            );
        }
        if let (Some(a), Some(b)) = (down(rows, PC_WRITES, mib), down(rows, SC_WRITES, mib)) {
            let limit = if mib >= 1024 { 0.25 } else { f64::INFINITY };
            target_line(
                &format!("{PC_WRITES} / {SC_WRITES} at {mib} MiB (#28)"),
                a,
                b,
                limit,
                None,
            );
        }
    }
}

/// The local baseline: a fresh workload of `mib` MiB dumped to tmpfs and
/// restored from it on this host, through criu-rs; (dump, restore) wall.
fn local_dump_restore(mib: usize) -> (Duration, Duration) {
    let scratch = Fs::Tmpfs.scratch();
    let mut w = workload(&scratch.path().join("out.log"), mib);
    std::thread::sleep(Duration::from_millis(300));
    let dir = scratch.path().join("img");
    let images = ImagesDir::create(&dir).expect("images dir");
    let t = Instant::now();
    criu_rs_benches::dump(&Criu::new(), w.pid(), &images, false);
    let dump = t.elapsed();
    w.reap(Duration::from_secs(30))
        .expect("reaping the dumped workload");
    w.forget();
    let images = ImagesDir::open(&dir).expect("images dir");
    let t = Instant::now();
    let (child, _) = Criu::new()
        .restore_child(Options::new().images_dir(&images).log_file("restore.log"))
        .expect("local restore");
    let restore = t.elapsed();
    drop(child);
    (dump, restore)
}

/// One run of a repetition: a migration, or the local baseline.
#[derive(Clone, Copy)]
enum Run {
    Migrate(Strategy, Security),
    Local,
}

/// `order` rotated left by `rep` places.
fn rotated<T: Clone>(order: &[T], rep: usize) -> Vec<T> {
    let mut v = order.to_vec();
    if !v.is_empty() {
        v.rotate_left(rep % order.len());
    }
    v
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    become_subreaper();
    let reps = reps();
    let precopy = with_precopy();
    let mut rows: Vec<Summary> = Vec::new();
    for mib in migration_sizes() {
        let mut by: BTreeMap<String, Runs> = BTreeMap::new();
        // Interleaved: each repetition runs every strategy and the local
        // baseline once, so drift on this shared machine falls on all;
        // and in an order rotated by one each time, so that no row always
        // follows the same one (on this VM a restore is slow or fast by
        // what the run before it freed: BENCHMARKS.md, "Stop-and-copy's
        // restore on a fresh machine").
        let order: Vec<Run> = strategies()
            .into_iter()
            .flat_map(|s| transports().into_iter().map(move |t| Run::Migrate(s, t)))
            .chain([Run::Local])
            .collect();
        for rep in 0..reps {
            for run in rotated(&order, rep) {
                let (strategy, security) = match run {
                    Run::Migrate(strategy, security) => (strategy, security),
                    Run::Local => {
                        let (dump, restore) = local_dump_restore(mib);
                        by.entry(LOCAL.to_string())
                            .or_default()
                            .add_local(dump, restore);
                        continue;
                    }
                };
                let name = row_name(strategy, security);
                let start = Instant::now();
                match migrate_workload_over(security, strategy, &format!("memory:{mib}"), mib, Duration::from_millis(300), |_, _| {}) {
                    Ok(r) if r.continued && r.memory_intact != Some(false) => {
                        by.entry(name).or_default().add_migration(&r, start.elapsed());
                    }
                    Ok(r) => panic!("{name} {mib} MiB run {rep}: the workload did not continue correctly: {r:?}"),
                    Err(e) => panic!("{name} {mib} MiB run {rep}: {e}"),
                }
            }
            if with_lazy_restore() {
                let start = Instant::now();
                let lazily = || criu::migrate::DestConfig::new().restore_lazily(true);
                match migrate_workload_with(Security::Plain, Strategy::StopAndCopy, lazily, &format!("memory:{mib}"), mib, Duration::from_millis(300), |_, _| {}) {
                    Ok(r) if r.continued && r.memory_intact != Some(false) => {
                        by.entry(SC_LAZY.into()).or_default().add_migration(&r, start.elapsed());
                    }
                    Ok(r) => panic!("{SC_LAZY} {mib} MiB run {rep}: the workload did not continue correctly: {r:?}"),
                    Err(e) => panic!("{SC_LAZY} {mib} MiB run {rep}: {e}"),
                }
            }
            if with_registry() {
                let start = Instant::now();
                match criu_testkit::registry::migrate_via_registry_strategy(&format!("memory:{mib}"), mib, Duration::from_millis(300)) {
                    Ok(r) if r.continued && r.memory_intact != Some(false) => {
                        by.entry("registry".into()).or_default().add_migration(&r, start.elapsed());
                    }
                    Ok(r) => panic!("registry {mib} MiB run {rep}: the workload did not continue correctly: {r:?}"),
                    Err(e) => panic!("registry {mib} MiB run {rep}: {e}"),
                }
                let start = Instant::now();
                match criu_testkit::registry::migrate_via_registry(criu_testkit::registry::Compression::None, &format!("memory:{mib}"), mib, Duration::from_millis(300)) {
                    Ok((r, _)) if r.continued && r.memory_intact != Some(false) => {
                        by.entry(REG_SEQ.into()).or_default().add_migration(&r, start.elapsed());
                    }
                    Ok((r, _)) => panic!("{REG_SEQ} {mib} MiB run {rep}: the workload did not continue correctly: {r:?}"),
                    Err(e) => panic!("{REG_SEQ} {mib} MiB run {rep}: {e}"),
                }
            }
            if precopy {
                let hosts = criu_testkit::hosts::TwoHosts::new().expect("two hosts");
                for (name, strategy) in [
                    (SC_WRITES, Strategy::StopAndCopy),
                    (PC_WRITES, Strategy::PreCopy),
                ] {
                    match criu_rs_benches::migrate_writing(&hosts, strategy, mib, false) {
                        Ok(r) => by.entry(name.into()).or_default().add_source_report(&r),
                        Err(e) => panic!("{name} {mib} MiB run {rep}: {e}"),
                    }
                }
            }
        }
        let names = Strategy::ALL
            .iter()
            .flat_map(|&s| [row_name(s, Security::Plain), row_name(s, Security::Tls)])
            .chain([SC_LAZY, SC_WRITES, PC_WRITES, "registry", REG_SEQ, LOCAL].map(String::from));
        for name in names {
            if let Some(runs) = by.remove(&name) {
                rows.push(runs.summary(&name, mib));
                let r = rows.last().unwrap();
                eprintln!(
                    "migration {name} {mib} MiB: median downtime {:.1} ms (spread {:.2}x)",
                    r.median_downtime_ms, r.downtime_spread
                );
                if name == "registry" || name == REG_SEQ {
                    let phases: Vec<String> = r
                        .phases_ms
                        .iter()
                        .filter(|(_, &v)| v > 0.0)
                        .map(|(k, v)| format!("{k} {v:.0}"))
                        .collect();
                    eprintln!("  registry phases (median ms): {}", phases.join(", "));
                }
            }
        }
    }
    println!(
        "{:<20} {:>6} {:>5} {:>14} {:>12} {:>10} {:>18} {:>8}",
        "strategy",
        "MiB",
        "runs",
        "downtime ms",
        "total ms",
        "wire MiB",
        "downtime / s&c",
        "spread"
    );
    for r in &rows {
        // TLS rows against stop-and-copy over TLS, the writing workload's
        // against its own stop-and-copy, the others against plain.
        let sc = if r.strategy.ends_with("/tls") {
            "stop-and-copy/tls"
        } else if r.strategy.ends_with("+writes") {
            SC_WRITES
        } else {
            "stop-and-copy"
        };
        let base = down(&rows, sc, r.mib).unwrap_or(f64::NAN);
        println!(
            "{:<20} {:>6} {:>5} {:>14.1} {:>12.1} {:>10.1} {:>17.3}x {:>7.2}x",
            r.strategy,
            r.mib,
            r.runs,
            r.median_downtime_ms,
            r.median_total_ms,
            r.median_transfer_bytes / 1048576.0,
            r.median_downtime_ms / base,
            r.downtime_spread
        );
    }
    print_targets(&rows);
    let dir = out_dir();
    std::fs::write(
        dir.join("migration.json"),
        serde_json::to_string_pretty(&rows).unwrap() + "\n",
    )
    .unwrap();
    if let Err(e) = plot(&rows, &dir.join("downtime.svg")) {
        eprintln!("plot: {e}");
    }
}

fn plot(rows: &[Summary], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let max_mib = rows.iter().map(|r| r.mib).max().unwrap_or(1) as f64;
    let max_ms = rows
        .iter()
        .map(|r| r.median_downtime_ms)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Application-observed downtime vs memory size (median)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_mib * 1.05, 0f64..max_ms * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("memory (MiB)")
        .y_desc("downtime (ms)")
        .draw()?;
    for (i, strategy) in Strategy::ALL.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.strategy == strategy.name())
            .map(|r| (r.mib as f64, r.median_downtime_ms))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(strategy.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
