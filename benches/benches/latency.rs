//! Freeze and restore latency versus memory size, images on tmpfs and on
//! disk; leave-running versus kill; criu-rs beside the `criu` CLI, the
//! rust-criu crate and raw criu-sys calls; and the physical references
//! (writing the same bytes to the same filesystem, memcpy).
//!
//! Each dump gets a fresh workload and a fresh images directory, made
//! outside the timed region; CRIU's own freezing/frozen times of every
//! timed dump are appended to `target/criu-rs-bench/criu-stats.jsonl`.

use std::ffi::CString;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use criu::{Criu, ImagesDir, Options};
use criu_rs_benches::{
    become_subreaper, kill_and_reap, record, samples, sizes, smallest, workload, Fs, StatsRecord,
};

const MIB: u64 = 1 << 20;

/// One dump implementation: dumps `pid` into `dir` (killing it).
type DumpFn = fn(i32, &Path);
/// One restore implementation: restores from `dir`, returns the root pid
/// (our child or an orphan we reap).
type RestoreFn = fn(&Path) -> i32;

fn dump_criu_rs(pid: i32, dir: &Path) {
    let images = ImagesDir::open(dir).unwrap();
    Criu::new()
        .dump(
            Options::new()
                .pid(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .expect("criu-rs dump");
}

fn dump_raw_sys(pid: i32, dir: &Path) {
    let d = std::fs::File::open(dir).unwrap();
    let log = CString::new("dump.log").unwrap();
    let mut o: *mut criu_sys::criu_opts = std::ptr::null_mut();
    // SAFETY: the documented libcriu sequence on a handle that starts NULL.
    let rc = unsafe {
        criu_sys::criu_local_init_opts(&mut o);
        criu_sys::criu_local_set_pid(o, pid);
        criu_sys::criu_local_set_images_dir_fd(o, d.as_raw_fd());
        criu_sys::criu_local_set_log_file(o, log.as_ptr());
        let rc = criu_sys::criu_local_dump(o);
        criu_sys::criu_local_free_opts(o);
        rc
    };
    assert_eq!(rc, 0, "raw criu-sys dump");
}

fn dump_cli(pid: i32, dir: &Path) {
    let ok = Command::new("criu")
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["-o", "dump.log"])
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "criu dump");
}

fn dump_rust_criu(pid: i32, dir: &Path) {
    let d = std::fs::File::open(dir).unwrap();
    let mut c = rust_criu::Criu::new().expect("rust-criu");
    c.set_pid(pid);
    c.set_images_dir_fd(d.as_raw_fd());
    c.set_log_file("dump.log".into());
    c.dump().expect("rust-criu dump");
}

fn restore_criu_rs(dir: &Path) -> i32 {
    let images = ImagesDir::open(dir).unwrap();
    let (child, _) = Criu::new()
        .restore_child(Options::new().images_dir(&images).log_file("restore.log"))
        .expect("criu-rs restore");
    child.detach()
}

fn restore_raw_sys(dir: &Path) -> i32 {
    let d = std::fs::File::open(dir).unwrap();
    let log = CString::new("restore.log").unwrap();
    let mut o: *mut criu_sys::criu_opts = std::ptr::null_mut();
    // SAFETY: as in dump_raw_sys.
    let pid = unsafe {
        criu_sys::criu_local_init_opts(&mut o);
        criu_sys::criu_local_set_images_dir_fd(o, d.as_raw_fd());
        criu_sys::criu_local_set_log_file(o, log.as_ptr());
        let pid = criu_sys::criu_local_restore_child(o);
        criu_sys::criu_local_free_opts(o);
        pid
    };
    assert!(pid > 0, "raw criu-sys restore");
    pid
}

fn restore_cli(dir: &Path) -> i32 {
    let pidfile = dir.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let ok = Command::new("criu")
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(["-o", "restore.log", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "criu restore");
    std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn restore_rust_criu(dir: &Path) -> i32 {
    let d = std::fs::File::open(dir).unwrap();
    let mut c = rust_criu::Criu::new().expect("rust-criu");
    c.set_images_dir_fd(d.as_raw_fd());
    c.set_log_file("restore.log".into());
    // rust-criu does not return the pid; the root keeps its dumped pid.
    c.set_rst_sibling(true);
    c.restore().expect("rust-criu restore");
    ImagesDir::open(dir).unwrap().root_pid().unwrap()
}

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
        let mut g = c.benchmark_group(format!("dump_{}", fs.name()));
        configure(&mut g);
        for mib in sizes() {
            g.throughput(Throughput::Bytes(mib as u64 * MIB));
            g.bench_with_input(BenchmarkId::from_parameter(mib), &mib, |b, &mib| {
                b.iter_custom(|n| time_dumps(n, fs, mib, "dump", dump_criu_rs))
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("restore_{}", fs.name()));
        configure(&mut g);
        for mib in sizes() {
            g.throughput(Throughput::Bytes(mib as u64 * MIB));
            g.bench_with_input(BenchmarkId::from_parameter(mib), &mib, |b, &mib| {
                b.iter_custom(|n| time_restores(n, fs, mib, restore_criu_rs))
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("write_limit_{}", fs.name()));
        configure(&mut g);
        for mib in sizes() {
            g.throughput(Throughput::Bytes(mib as u64 * MIB));
            g.bench_with_input(BenchmarkId::from_parameter(mib), &mib, |b, &mib| {
                let data = vec![0x5au8; mib << 20];
                b.iter_custom(|n| {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        let scratch = fs.scratch();
                        let t = Instant::now();
                        let mut f =
                            std::fs::File::create(scratch.path().join("pages.img")).unwrap();
                        f.write_all(&data).unwrap();
                        drop(f);
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        g.finish();
    }
    let mut g = c.benchmark_group("memcpy");
    configure(&mut g);
    for mib in sizes() {
        g.throughput(Throughput::Bytes(mib as u64 * MIB));
        g.bench_with_input(BenchmarkId::from_parameter(mib), &mib, |b, &mib| {
            let src = vec![0x5au8; mib << 20];
            let mut dst = vec![0u8; mib << 20];
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
    }
    g.finish();
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
                Criu::new()
                    .dump(
                        Options::new()
                            .pid(w.pid())
                            .images_dir(&images)
                            .leave_running(true),
                    )
                    .expect("dump");
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn peers(c: &mut Criterion) {
    let mib = smallest();
    let dumps: [(&str, DumpFn); 4] = [
        ("criu-rs", dump_criu_rs),
        ("criu-sys", dump_raw_sys),
        ("criu-cli", dump_cli),
        ("rust-criu", dump_rust_criu),
    ];
    let mut g = c.benchmark_group(format!("peers_dump_{mib}MiB_tmpfs"));
    configure(&mut g);
    for (name, f) in dumps {
        g.bench_function(name, |b| {
            b.iter_custom(|n| time_dumps(n, Fs::Tmpfs, mib, name, f))
        });
    }
    g.finish();
    let restores: [(&str, RestoreFn); 4] = [
        ("criu-rs", restore_criu_rs),
        ("criu-sys", restore_raw_sys),
        ("criu-cli", restore_cli),
        ("rust-criu", restore_rust_criu),
    ];
    let mut g = c.benchmark_group(format!("peers_restore_{mib}MiB_tmpfs"));
    configure(&mut g);
    for (name, f) in restores {
        g.bench_function(name, |b| {
            b.iter_custom(|n| time_restores(n, Fs::Tmpfs, mib, f))
        });
    }
    g.finish();
}

criterion_group!(benches, peers, leave_running, by_size);
criterion_main!(benches);
