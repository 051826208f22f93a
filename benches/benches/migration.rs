//! Migration cost by strategy and memory size: the application-observed
//! downtime, the whole migration's time and the bytes on the wire, as
//! medians over `CRIU_RS_BENCH_REPS` runs. Prints a table with ratios,
//! writes `target/criu-rs-bench/migration.json` and a plot of downtime
//! versus size per strategy, `target/criu-rs-bench/downtime.svg`.
//!
//! Sizes: `CRIU_RS_BENCH_MIGRATION_SIZES` (MiB, default `16`; the
//! published run uses `16,256,1024`).

use std::time::Duration;

use criu::migrate::Strategy;
use criu_rs_benches::{median, out_dir, reps};
use criu_testkit::measure::migrate_workload;
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
}

fn sizes() -> Vec<usize> {
    std::env::var("CRIU_RS_BENCH_MIGRATION_SIZES")
        .unwrap_or_else(|_| "16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&s| s > 0)
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps = reps();
    let mut rows: Vec<Summary> = Vec::new();
    for mib in sizes() {
        for strategy in Strategy::ALL {
            let mut down = Vec::new();
            let mut total = Vec::new();
            let mut bytes = Vec::new();
            for rep in 0..reps {
                let start = std::time::Instant::now();
                match migrate_workload(strategy, &format!("memory:{mib}"), mib, Duration::from_millis(300), |_, _| {}) {
                    Ok(r) if r.continued && r.memory_intact != Some(false) => {
                        down.push(r.cost.downtime_ms);
                        total.push(start.elapsed().as_secs_f64() * 1000.0);
                        bytes.push(r.cost.transfer_bytes as f64);
                    }
                    Ok(r) => panic!("{strategy} {mib} MiB run {rep}: the workload did not continue correctly: {r:?}"),
                    Err(e) => panic!("{strategy} {mib} MiB run {rep}: {e}"),
                }
            }
            let all = down.clone();
            rows.push(Summary {
                strategy: strategy.to_string(),
                mib,
                runs: reps,
                downtime_ms: all,
                median_downtime_ms: median(&mut down),
                median_total_ms: median(&mut total),
                median_transfer_bytes: median(&mut bytes),
            });
            eprintln!(
                "migration {strategy} {mib} MiB: median downtime {:.1} ms",
                rows.last().unwrap().median_downtime_ms
            );
        }
    }
    println!(
        "{:<14} {:>6} {:>5} {:>14} {:>12} {:>10} {:>18}",
        "strategy", "MiB", "runs", "downtime ms", "total ms", "wire MiB", "downtime / s&c"
    );
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.mib == r.mib && b.strategy == "stop-and-copy")
            .map_or(f64::NAN, |b| b.median_downtime_ms);
        println!(
            "{:<14} {:>6} {:>5} {:>14.1} {:>12.1} {:>10.1} {:>17.3}x",
            r.strategy,
            r.mib,
            r.runs,
            r.median_downtime_ms,
            r.median_total_ms,
            r.median_transfer_bytes / 1048576.0,
            r.median_downtime_ms / base
        );
    }
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
