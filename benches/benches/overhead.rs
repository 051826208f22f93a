//! The cost of the safe layer, measured side by side: in each round, every
//! implementation (criu-rs, raw criu-sys, the `criu` CLI, rust-criu) dumps
//! a fresh 1 MiB workload, then restores it, in an order rotated per round,
//! so drift and order effects fall on all of them alike. A fifth peer,
//! criu-rs through a long-running `criu service` (which the bench starts and
//! owns), shows what starting CRIU for every call costs. Prints medians and
//! criu-rs's ratio to each; writes `target/criu-rs-bench/overhead.json`.
//! It also prints the safe layer's own time per call (the criu-rs call's
//! wall time minus the libcriu call inside it, as its report gives it):
//! a figure the round-to-round noise of CRIU itself does not blur.
//! Rounds: `CRIU_RS_BENCH_ROUNDS` (default 15).

mod peers;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criu::{Criu, ImagesDir, Options};

use criu_rs_benches::{become_subreaper, kill_and_reap, median, out_dir, workload, Fs};
use peers::*;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    become_subreaper();
    let rounds: usize = std::env::var("CRIU_RS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let service = criu::DaemonConfig::new()
        .service()
        .expect("starting criu service");
    SERVICE_SOCKET
        .set(service.socket().to_path_buf())
        .expect("set once");
    let impls: [(&str, DumpFn, RestoreFn); 5] = [
        ("criu-rs", dump_criu_rs, restore_criu_rs),
        ("criu-sys", dump_raw_sys, restore_raw_sys),
        ("criu-cli", dump_cli, restore_cli),
        ("rust-criu", dump_rust_criu, restore_rust_criu),
        (
            "criu-rs-service",
            dump_criu_rs_service,
            restore_criu_rs_service,
        ),
    ];
    let mut dumps = vec![Vec::new(); impls.len()];
    let mut restores = vec![Vec::new(); impls.len()];
    for round in 0..rounds {
        for k in 0..impls.len() {
            let i = (k + round) % impls.len();
            let (_, dump, restore) = impls[i];
            let scratch = Fs::Tmpfs.scratch();
            let mut w = workload(&scratch.path().join("out.log"), 1);
            let dir = scratch.path().join("img");
            std::fs::create_dir(&dir).unwrap();
            let t = Instant::now();
            dump(w.pid(), &dir);
            dumps[i].push(t.elapsed().as_secs_f64() * 1000.0);
            w.reap(Duration::from_secs(30)).unwrap();
            w.forget();
            let t = Instant::now();
            let pid = restore(&dir);
            restores[i].push(t.elapsed().as_secs_f64() * 1000.0);
            kill_and_reap(pid);
        }
    }
    drop(service);
    let mut out = serde_json::Map::new();
    let (own_d, own_r) = {
        let own = peers::OWN_US.lock().unwrap();
        (median(&mut own.0.clone()), median(&mut own.1.clone()))
    };
    println!("criu-rs's own time outside the libcriu call (median): dump {own_d:.1} us, restore {own_r:.1} us");
    out.insert(
        "criu-rs-own".to_string(),
        serde_json::json!({"rounds": rounds, "dump_median_us": own_d, "restore_median_us": own_r}),
    );
    println!(
        "{:<16} {:>14} {:>12} {:>17} {:>15}",
        "impl", "dump median ms", "criu-rs / it", "restore median ms", "criu-rs / it"
    );
    let ours_d = median(&mut dumps[0].clone());
    let ours_r = median(&mut restores[0].clone());
    for (i, (name, _, _)) in impls.iter().enumerate() {
        let d = median(&mut dumps[i]);
        let r = median(&mut restores[i]);
        println!(
            "{name:<16} {d:>14.2} {:>12.3} {r:>17.2} {:>15.3}",
            ours_d / d,
            ours_r / r
        );
        out.insert(
            name.to_string(),
            serde_json::json!({"rounds": rounds, "dump_median_ms": d, "restore_median_ms": r}),
        );
    }
    std::fs::write(
        out_dir().join("overhead.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
}

/// The socket of the `criu service` the `criu-rs-service` peer talks to
/// (started and owned by the bench's `main`).
static SERVICE_SOCKET: OnceLock<PathBuf> = OnceLock::new();

fn service_client() -> Criu {
    Criu::with_service_address(SERVICE_SOCKET.get().expect("the bench started a service"))
}

fn dump_criu_rs_service(pid: i32, dir: &Path) {
    dump_with(&service_client(), pid, dir);
}

fn restore_criu_rs_service(dir: &Path) -> i32 {
    let images = ImagesDir::open(dir).unwrap();
    let report = service_client()
        .restore(Options::new().images_dir(&images).log_file("restore.log"))
        .expect("criu-rs restore through criu service");
    report.pid
}
