//! The cost of mutual TLS on migration: for each strategy and size, plain
//! and TLS runs interleaved (plain, tls, plain, tls...) so that both see
//! the same machine load, through the steps of `criu-rs send` / `receive`.
//! Reports the median application-observed downtime of each, their ratio
//! (target: TLS at most 1.25x plain), and the image stream's throughput
//! (stop-and-copy carries all memory on it; page-server and lazy carry
//! memory on CRIU's own connections, so their stream figure is small).
//! First, the image stream alone (`CRIU_RS_BENCH_STREAM_MIB`, default
//! 256 MiB, sent over loopback, plain and through the crate's TLS stream,
//! interleaved; with each side's CPU time, which the machine's load
//! hardly changes; `--stream-only` stops there). Writes `target/criu-rs-bench/tls.json` and `tls-stream.json`.
//!
//! Sizes: `CRIU_RS_BENCH_MIGRATION_SIZES` (MiB, default `16`); strategies:
//! `CRIU_RS_BENCH_STRATEGIES` (default all); reps:
//! `CRIU_RS_BENCH_REPS` (default 3; the target's is 5).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use criu::migrate::Strategy;
use criu::tls::TlsConfig;
use criu::transfer::{receive_dir, send_dir, Limits, Transport};
use criu_rs_benches::{median, migration_sizes, out_dir, reps, strategies};
use criu_testkit::certs::Pki;
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

/// The CPU time this thread has used so far, in all and in user space:
/// unlike wall time, it hardly changes with the machine's load. The user
/// part is the cipher and the copies of the stream's own code; the
/// kernel's part (socket, page cache) varies more with the load.
#[derive(Clone, Copy)]
struct ThreadCpu {
    all: Duration,
    user: Duration,
}

fn thread_cpu() -> ThreadCpu {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; RUSAGE_THREAD is this thread's.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ThreadCpu {
        all: Duration::new(t.tv_sec as u64, t.tv_nsec as u32),
        user: Duration::new(ru.ru_utime.tv_sec as u64, ru.ru_utime.tv_usec as u32 * 1000),
    }
}

impl std::ops::Sub for ThreadCpu {
    type Output = ThreadCpu;
    fn sub(self, earlier: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            all: self.all.saturating_sub(earlier.all),
            user: self.user.saturating_sub(earlier.user),
        }
    }
}

/// One stream's figures: MiB/s, and the CPU time of the sending and of
/// the receiving thread, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
struct Rate {
    mib_s: f64,
    send_cpu_ms: f64,
    recv_cpu_ms: f64,
    /// The user-space part of each.
    send_user_ms: f64,
    recv_user_ms: f64,
}

/// One directory of `mib` MiB sent over loopback TCP, plain or through
/// the crate's TLS stream, as a migration sends its images.
fn stream_rate(pki: &Pki, src: &Path, mib: usize, tls: bool) -> Rate {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TlsConfig::new(pki.b.clone()).unwrap();
    let into = tempfile::tempdir().unwrap();
    let target = into.path().join("got");
    let receiver = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let limits = Limits::default();
        if tls {
            let mut s = server.accept(tcp).unwrap();
            let cpu = thread_cpu();
            s.prepare(None).unwrap();
            receive_dir(&mut s, &target, &limits, None).unwrap();
            thread_cpu() - cpu
        } else {
            let mut s = tcp;
            let cpu = thread_cpu();
            s.prepare(None).unwrap();
            receive_dir(&mut s, &target, &limits, None).unwrap();
            thread_cpu() - cpu
        }
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let cpu;
    if tls {
        let mut s = TlsConfig::new(pki.a.clone()).unwrap().connect(tcp).unwrap();
        cpu = thread_cpu();
        s.prepare(None).unwrap();
        send_dir(&mut s, src, None).unwrap();
    } else {
        let mut s = tcp;
        cpu = thread_cpu();
        s.prepare(None).unwrap();
        send_dir(&mut s, src, None).unwrap();
    }
    let send_cpu = thread_cpu() - cpu;
    let recv_cpu = receiver.join().unwrap();
    Rate {
        mib_s: mib as f64 / start.elapsed().as_secs_f64(),
        send_cpu_ms: send_cpu.all.as_secs_f64() * 1000.0,
        recv_cpu_ms: recv_cpu.all.as_secs_f64() * 1000.0,
        send_user_ms: send_cpu.user.as_secs_f64() * 1000.0,
        recv_user_ms: recv_cpu.user.as_secs_f64() * 1000.0,
    }
}

/// The size of the stream alone, MiB (`CRIU_RS_BENCH_STREAM_MIB`, default 256).
fn stream_mib() -> usize {
    std::env::var("CRIU_RS_BENCH_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| m > 0)
        .unwrap_or(256)
}

/// The medians of some rates.
fn median_rate(v: &[Rate]) -> Rate {
    let m = |f: fn(&Rate) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    Rate {
        mib_s: m(|r| r.mib_s),
        send_cpu_ms: m(|r| r.send_cpu_ms),
        recv_cpu_ms: m(|r| r.recv_cpu_ms),
        send_user_ms: m(|r| r.send_user_ms),
        recv_user_ms: m(|r| r.recv_user_ms),
    }
}

/// The image stream alone, plain and TLS interleaved: medians.
fn stream_throughput(reps: usize) -> (Rate, Rate) {
    let mib = stream_mib();
    let pki = Pki::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(src.path().join("pages-1.img")).unwrap();
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for _ in 0..mib {
        f.write_all(&block).unwrap();
    }
    drop(f);
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        plain.push(stream_rate(&pki, src.path(), mib, false));
        tls.push(stream_rate(&pki, src.path(), mib, true));
    }
    let (p, t) = (median_rate(&plain), median_rate(&tls));
    println!(
        "image stream alone, {mib} MiB over loopback, medians of {reps} (CPU time is the \
         thread's own, so load hardly changes it):"
    );
    for (name, r) in [("plain", p), ("tls", t)] {
        println!(
            "  {name:<5} {:>6.0} MiB/s, sender CPU {:>6.1} ms ({:>6.1} user), receiver CPU \
             {:>6.1} ms ({:>6.1} user)",
            r.mib_s, r.send_cpu_ms, r.send_user_ms, r.recv_cpu_ms, r.recv_user_ms
        );
    }
    println!(
        "  tls / plain: throughput {:.0}%, sender CPU {:.2}x, receiver CPU {:.2}x",
        100.0 * t.mib_s / p.mib_s,
        t.send_cpu_ms / p.send_cpu_ms.max(0.001),
        t.recv_cpu_ms / p.recv_cpu_ms.max(0.001)
    );
    (p, t)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let reps = reps();
    let stream = stream_throughput(reps);
    std::fs::write(
        out_dir().join("tls-stream.json"),
        serde_json::json!({ "mib": stream_mib(), "runs": reps, "plain": stream.0, "tls": stream.1 })
            .to_string() + "\n",
    )
    .unwrap();
    if std::env::args().any(|a| a == "--stream-only") {
        return;
    }
    let mut out = Vec::new();
    for mib in migration_sizes() {
        for strategy in strategies() {
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
    println!(
        "image stream alone, {} MiB over loopback: plain {:.0} MiB/s, tls {:.0} MiB/s ({:.0}%)",
        stream_mib(),
        stream.0.mib_s,
        stream.1.mib_s,
        100.0 * stream.1.mib_s / stream.0.mib_s
    );
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
