//! Freeze and restore latency versus memory size, images on tmpfs and on
//! disk; leave-running versus kill; criu-rs beside the `criu` CLI, the
//! rust-criu crate and raw criu-sys calls; and the physical references
//! (writing the same bytes to the same filesystem, memcpy).
//!
//! Each dump gets a fresh workload and a fresh images directory, made
//! outside the timed region; CRIU's own freezing/frozen times of every
//! timed dump are appended to `target/criu-rs-bench/criu-stats.jsonl`.

use std::hint::black_box;
use std::io::Write;

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, Bencher, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use criu::{Criu, ImagesDir};
mod peers;
use criu_rs_benches::{
    become_subreaper, kill_and_reap, record, samples, sizes, smallest, workload, Fs, StatsRecord,
};
use peers::*;

const MIB: u64 = 1 << 20;

/// Times `iters` dumps, each of a fresh workload into a fresh directory.
fn time_dumps(iters: u64, fs: Fs, mib: usize, name: &str, dump: DumpFn) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let scratch = fs.scratch();
        let mut w = workload(&scratch.path().join("out.log"), mib);
        let dir = scratch.path().join("img");
        std::fs::create_dir(&dir).unwrap();
        let t = Instant::now();
        dump(w.pid(), &dir);
        let wall = t.elapsed();
        total += wall;
        w.reap(Duration::from_secs(30)).unwrap();
        if let Ok(Some(s)) = ImagesDir::open(&dir).unwrap().dump_stats() {
            if let Some(d) = s.dump {
                record(&StatsRecord {
                    bench: name,
                    fs: fs.name(),
                    mib,
                    wall_us: wall.as_micros() as u64,
                    freezing_time_us: d.freezing_time.as_micros() as u64,
                    frozen_time_us: d.frozen_time.as_micros() as u64,
                    memdump_time_us: d.memdump_time.as_micros() as u64,
                    memwrite_time_us: d.memwrite_time.as_micros() as u64,
                    pages_written: d.pages_written,
                });
            }
        }
    }
    total
}

/// Times `iters` restores from one checkpoint; each restored tree is
/// killed and reaped outside the timed region.
fn time_restores(iters: u64, fs: Fs, mib: usize, restore: RestoreFn) -> Duration {
    let scratch = fs.scratch();
    let mut w = workload(&scratch.path().join("out.log"), mib);
    let dir = scratch.path().join("img");
    std::fs::create_dir(&dir).unwrap();
    dump_criu_rs(w.pid(), &dir);
    w.reap(Duration::from_secs(30)).unwrap();
    w.forget();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let pid = restore(&dir);
        total += t.elapsed();
        kill_and_reap(pid);
    }
    total
}

fn configure<M: criterion::measurement::Measurement>(g: &mut criterion::BenchmarkGroup<'_, M>) {
    g.sample_size(samples())
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
}

fn by_size(c: &mut Criterion) {
    become_subreaper();
    for fs in Fs::selected() {
        per_size(c, format!("dump_{}", fs.name()), |b, mib| {
            b.iter_custom(|n| time_dumps(n, fs, mib, "dump", dump_criu_rs))
        });
        per_size(c, format!("restore_{}", fs.name()), |b, mib| {
            b.iter_custom(|n| time_restores(n, fs, mib, restore_criu_rs))
        });
        per_size(c, format!("write_limit_{}", fs.name()), |b, mib| {
            let data = vec![0x5au8; mib << 20];
            b.iter_custom(|n| time_writes(n, fs, &data))
        });
    }
    per_size(c, "memcpy".into(), |b, mib| {
        let src = vec![0x5au8; mib << 20];
        let mut dst = vec![0u8; mib << 20];
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
}

/// One criterion group with a benchmark per memory size of
/// `CRIU_RS_BENCH_SIZES`, each run by `bench` with its size in MiB.
fn per_size(c: &mut Criterion, group: String, mut bench: impl FnMut(&mut Bencher<'_>, usize)) {
    let mut g = c.benchmark_group(group);
    configure(&mut g);
    for mib in sizes() {
        g.throughput(Throughput::Bytes(mib as u64 * MIB));
        g.bench_with_input(BenchmarkId::from_parameter(mib), &mib, |b, &mib| {
            bench(b, mib)
        });
    }
    g.finish();
}

/// Times `iters` writes of `data` to a fresh file on `fs`: what writing
/// the pages of a dump costs at the least.
fn time_writes(iters: u64, fs: Fs, data: &[u8]) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let scratch = fs.scratch();
        let t = Instant::now();
        let mut f = std::fs::File::create(scratch.path().join("pages.img")).unwrap();
        f.write_all(data).unwrap();
        drop(f);
        total += t.elapsed();
    }
    total
}

fn leave_running(c: &mut Criterion) {
    let mib = smallest()
        .max(16)
        .min(sizes().into_iter().max().unwrap_or(16));
    let mut g = c.benchmark_group(format!("dump_mode_{mib}MiB_tmpfs"));
    configure(&mut g);
    g.bench_function("kill", |b| {
        b.iter_custom(|n| time_dumps(n, Fs::Tmpfs, mib, "kill", dump_criu_rs))
    });
    g.bench_function("leave_running", |b| {
        b.iter_custom(|n| {
            let scratch = Fs::Tmpfs.scratch();
            let w = workload(&scratch.path().join("out.log"), mib);
            let mut total = Duration::ZERO;
            for i in 0..n {
                let images = ImagesDir::create(scratch.path().join(format!("img{i}"))).unwrap();
                let t = Instant::now();
                criu_rs_benches::dump(&Criu::new(), w.pid(), &images, true);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn peers(c: &mut Criterion) {
    // The CLI restores detached: its trees must come back to us to be reaped.
    become_subreaper();
    let mib = smallest();
    let dumps: [(&str, DumpFn); 4] = [
        ("criu-rs", dump_criu_rs),
        ("criu-sys", dump_raw_sys),
        ("criu-cli", dump_cli),
        ("rust-criu", dump_rust_criu),
    ];
    compare(
        c,
        format!("peers_dump_{mib}MiB_tmpfs"),
        dumps,
        |n, name, f| time_dumps(n, Fs::Tmpfs, mib, name, f),
    );
    let restores: [(&str, RestoreFn); 4] = [
        ("criu-rs", restore_criu_rs),
        ("criu-sys", restore_raw_sys),
        ("criu-cli", restore_cli),
        ("rust-criu", restore_rust_criu),
    ];
    compare(
        c,
        format!("peers_restore_{mib}MiB_tmpfs"),
        restores,
        |n, _, f| time_restores(n, Fs::Tmpfs, mib, f),
    );
}

/// One criterion group with a benchmark per peer, each timing `n` runs of
/// its implementation through `time`.
fn compare<F: Copy>(
    c: &mut Criterion,
    group: String,
    peers: [(&str, F); 4],
    time: impl Fn(u64, &str, F) -> Duration,
) {
    let mut g = c.benchmark_group(group);
    configure(&mut g);
    for (name, f) in peers {
        g.bench_function(name, |b| b.iter_custom(|n| time(n, name, f)));
    }
    g.finish();
}

criterion_group!(benches, peers, leave_running, by_size);
criterion_main!(benches);
