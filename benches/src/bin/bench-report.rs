//! Turns a benchmark run into the tables of BENCHMARKS.md: criterion's
//! medians (`target/criterion/*/*/new/estimates.json`), CRIU's own timings
//! of each dump (`target/criu-rs-bench/criu-stats.jsonl`) and the migration
//! summary (`target/criu-rs-bench/migration.json`). Copies the plots to
//! `docs/bench/` and draws the downtime's phases per strategy and size as
//! stacked bars (`docs/bench/phases.svg`). Prints Markdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use criu_rs_benches::{median, out_dir};
use plotters::prelude::*;

fn target() -> PathBuf {
    out_dir().parent().expect("target dir").to_path_buf()
}

/// When the run being reported began (`make bench` touches
/// `run-started`). Criterion keeps every group it ever measured; results
/// older than this are from an earlier run and are left out.
fn run_started() -> Option<SystemTime> {
    std::fs::metadata(out_dir().join("run-started"))
        .ok()?
        .modified()
        .ok()
}

/// Criterion's median for `group/id`, in ms, if measured in this run.
fn med(group: &str, id: &str) -> Option<f64> {
    let p = target()
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    if let Some(started) = run_started() {
        if std::fs::metadata(&p).ok()?.modified().ok()? < started {
            return None;
        }
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / 1e6)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v < 1.0 {
            format!("{v:.3}")
        } else {
            format!("{v:.1}")
        }
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

fn main() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench");
    let _ = std::fs::create_dir_all(&docs);
    // CRIU's own stopped time (freezing + frozen) per (bench, fs, mib).
    let mut stopped: BTreeMap<(String, String, u64), Vec<f64>> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(out_dir().join("criu-stats.jsonl")) {
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let key = (
                v["bench"].as_str().unwrap_or("").to_string(),
                v["fs"].as_str().unwrap_or("").to_string(),
                v["mib"].as_u64().unwrap_or(0),
            );
            let ms = (v["freezing_time_us"].as_f64().unwrap_or(0.0)
                + v["frozen_time_us"].as_f64().unwrap_or(0.0))
                / 1000.0;
            stopped.entry(key).or_default().push(ms);
        }
    }
    let stop_med = |bench: &str, fs: &str, mib: u64| {
        stopped
            .get(&(bench.to_string(), fs.to_string(), mib))
            .map(|v| median(&mut v.clone()))
    };

    // Peers at the smallest size.
    let crit = target().join("criterion");
    let mut groups: Vec<String> = std::fs::read_dir(&crit)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    // Only the groups this run measured.
    groups.retain(|g| {
        std::fs::read_dir(crit.join(g)).is_ok_and(|ids| {
            ids.flatten()
                .any(|id| med(g, &id.file_name().to_string_lossy()).is_some())
        })
    });
    for kind in ["dump", "restore"] {
        for g in groups
            .iter()
            .filter(|g| g.starts_with(&format!("peers_{kind}_")))
        {
            println!(
                "\n### {kind}: criu-rs and its peers ({})\n",
                g.trim_start_matches(&format!("peers_{kind}_"))
            );
            println!("| implementation | median ms | criu-rs / it |");
            println!("|---|---:|---:|");
            let ours = med(g, "criu-rs");
            for id in ["criu-rs", "criu-sys", "criu-cli", "rust-criu"] {
                println!(
                    "| {id} | {} | {} |",
                    fmt(med(g, id)),
                    ratio(ours, med(g, id))
                );
            }
        }
    }
    // The interleaved comparison (benches/overhead.rs).
    if let Ok(text) = std::fs::read_to_string(out_dir().join("overhead.json")) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ours = &v["criu-rs"];
        println!("\n### The safe layer's cost, interleaved rounds (1 MiB, tmpfs)\n");
        println!("| implementation | rounds | dump median ms | criu-rs / it | restore median ms | criu-rs / it |");
        println!("|---|---:|---:|---:|---:|---:|");
        for id in [
            "criu-rs",
            "criu-sys",
            "criu-cli",
            "rust-criu",
            "criu-rs-service",
        ] {
            let r = &v[id];
            if r.is_null() {
                continue;
            }
            println!(
                "| {id} | {} | {} | {} | {} | {} |",
                r["rounds"],
                fmt(r["dump_median_ms"].as_f64()),
                ratio(
                    ours["dump_median_ms"].as_f64(),
                    r["dump_median_ms"].as_f64()
                ),
                fmt(r["restore_median_ms"].as_f64()),
                ratio(
                    ours["restore_median_ms"].as_f64(),
                    r["restore_median_ms"].as_f64()
                ),
            );
        }
    }
    // Latency versus size.
    for fs in ["tmpfs", "disk"] {
        let dump_g = format!("dump_{fs}");
        let Ok(entries) = std::fs::read_dir(crit.join(&dump_g)) else {
            continue;
        };
        let mut sizes: Vec<u64> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .filter(|mib: &u64| med(&dump_g, &mib.to_string()).is_some())
            .collect();
        sizes.sort();
        if sizes.is_empty() {
            continue;
        }
        println!("\n### Latency versus memory size, images on {fs}\n");
        println!("| MiB | dump ms | CRIU stopped ms | restore ms | write same bytes ms | memcpy ms | dump MiB/s | write MiB/s | dump / write throughput |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for mib in sizes {
            let id = mib.to_string();
            let dump = med(&dump_g, &id);
            let write = med(&format!("write_limit_{fs}"), &id);
            let thr = |ms: Option<f64>| ms.map(|ms| mib as f64 / (ms / 1000.0));
            println!(
                "| {mib} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(dump),
                fmt(stop_med("dump", fs, mib)),
                fmt(med(&format!("restore_{fs}"), &id)),
                fmt(write),
                fmt(med("memcpy", &id)),
                fmt(thr(dump)),
                fmt(thr(write)),
                ratio(thr(dump), thr(write)),
            );
        }
        for kind in ["dump", "restore"] {
            let src = crit.join(format!("{kind}_{fs}/report/lines.svg"));
            if src.exists() {
                let _ = std::fs::copy(&src, docs.join(format!("{kind}_{fs}_lines.svg")));
            }
        }
    }
    for g in groups.iter().filter(|g| g.starts_with("dump_mode_")) {
        println!(
            "\n### leave-running versus kill ({})\n",
            g.trim_start_matches("dump_mode_")
        );
        println!("| mode | median ms |");
        println!("|---|---:|");
        for id in ["kill", "leave_running"] {
            println!("| {id} | {} |", fmt(med(g, id)));
        }
    }
    if let Ok(text) = std::fs::read_to_string(out_dir().join("migration.json")) {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        println!("\n### Migration by strategy and size (medians)\n");
        println!("| strategy | MiB | runs | downtime ms | total ms | on the wire MiB | downtime / stop-and-copy's |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            let base = rows
                .iter()
                .find(|b| b["mib"] == r["mib"] && b["strategy"] == "stop-and-copy")
                .and_then(|b| b["median_downtime_ms"].as_f64());
            let d = r["median_downtime_ms"].as_f64();
            println!(
                "| {} | {} | {} | {} | {} | {:.1} | {} |",
                r["strategy"].as_str().unwrap_or(""),
                r["mib"],
                r["runs"],
                fmt(d),
                fmt(r["median_total_ms"].as_f64()),
                r["median_transfer_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                ratio(d, base)
            );
        }
        let _ = std::fs::copy(out_dir().join("downtime.svg"), docs.join("downtime.svg"));
        print_phases(&rows);
        if let Err(e) = plot_phases(&rows, &docs.join("phases.svg")) {
            eprintln!("phases plot: {e}");
        }
    }
}

/// The phases of a migration's downtime, in the order they happen (see
/// `criu::migrate::Phases`; `resume` is measured by the testkit); the
/// local baseline has `dump` and `restore`, the registry route its push
/// and pull in place of `transfer` (`testkit::measure::RegistryPhases`).
const PHASES: [&str; 15] = [
    "dump",
    "freeze",
    "frozen",
    "memory_dump",
    "memory_write",
    "dump_other",
    "transfer",
    "push_parts",
    "push_rest",
    "pull",
    "pull_parts",
    "unpack",
    "restore",
    "handoff",
    "resume",
];

fn phase_ms(r: &serde_json::Value, phase: &str) -> f64 {
    r["phases_ms"][phase].as_f64().unwrap_or(0.0)
}

/// The phase medians as a table, with their sum beside the downtime.
fn print_phases(rows: &[serde_json::Value]) {
    println!("\n### Where the downtime goes (medians, ms)\n");
    let shown: Vec<&str> = PHASES
        .iter()
        .copied()
        .filter(|p| rows.iter().any(|r| phase_ms(r, p) > 0.0))
        .collect();
    println!(
        "| strategy | MiB | {} | sum | downtime |",
        shown.join(" | ").replace('_', " ")
    );
    println!("|---|---:|{}---:|---:|", "---:|".repeat(shown.len()));
    for r in rows {
        let cells: Vec<String> = shown.iter().map(|p| fmt(Some(phase_ms(r, p)))).collect();
        let sum: f64 = shown.iter().map(|p| phase_ms(r, p)).sum();
        println!(
            "| {} | {} | {} | {} | {} |",
            r["strategy"].as_str().unwrap_or(""),
            r["mib"],
            cells.join(" | "),
            fmt(Some(sum)),
            fmt(r["median_downtime_ms"].as_f64())
        );
    }
}

/// Stacked bars of the phase medians: one panel per size (each with its
/// own scale, as 16 MiB and 1 GiB differ by two orders of magnitude), a
/// bar per strategy, a colour per phase.
fn plot_phases(rows: &[serde_json::Value], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<u64> = rows.iter().filter_map(|r| r["mib"].as_u64()).collect();
    sizes.sort();
    sizes.dedup();
    if sizes.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (360 * sizes.len() as u32 + 160, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Where the downtime goes: phases per strategy (medians)",
        ("sans-serif", 18),
    )?;
    let (panels, legend) = root.split_horizontally(360 * sizes.len() as u32);
    for (panel, mib) in panels.split_evenly((1, sizes.len())).iter().zip(&sizes) {
        let bars: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["mib"].as_u64() == Some(*mib))
            .collect();
        let top = bars
            .iter()
            .map(|r| {
                let sum: f64 = PHASES.iter().map(|p| phase_ms(r, p)).sum();
                sum.max(r["median_downtime_ms"].as_f64().unwrap_or(0.0))
            })
            .fold(1.0, f64::max);
        let names: Vec<String> = bars
            .iter()
            .map(|r| r["strategy"].as_str().unwrap_or("").to_string())
            .collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{mib} MiB"), ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..top * 1.08)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len())
            .x_label_formatter(&|x| {
                names
                    .get(x.floor() as usize)
                    .filter(|_| x.fract() == 0.5)
                    .cloned()
                    .unwrap_or_default()
            })
            .y_desc("ms")
            .draw()?;
        for (i, r) in bars.iter().enumerate() {
            let mut base = 0.0;
            for (k, p) in PHASES.iter().enumerate() {
                let h = phase_ms(r, p);
                if h <= 0.0 {
                    continue;
                }
                let x = i as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, base), (x + 0.85, base + h)],
                    Palette99::pick(k).filled(),
                )))?;
                base += h;
            }
            // The measured downtime, as a tick across the bar.
            if let Some(d) = r["median_downtime_ms"].as_f64() {
                let x = i as f64;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x + 0.05, d), (x + 0.95, d)],
                    BLACK.stroke_width(2),
                )))?;
            }
        }
    }
    for (k, p) in PHASES.iter().enumerate() {
        let y = 40 + 24 * k as i32;
        legend.draw(&Rectangle::new(
            [(10, y), (26, y + 14)],
            Palette99::pick(k).filled(),
        ))?;
        legend.draw(&Text::new(p.replace('_', " "), (32, y), ("sans-serif", 13)))?;
    }
    let y = 40 + 24 * PHASES.len() as i32 + 7;
    legend.draw(&PathElement::new(
        vec![(10, y), (26, y)],
        BLACK.stroke_width(2),
    ))?;
    legend.draw(&Text::new("downtime", (32, y - 7), ("sans-serif", 13)))?;
    root.present()?;
    Ok(())
}
