//! Migrate a live container between two hosts, with criu-rs and with runc,
//! and print both side by side.
//!
//! ```text
//! migrate_container [--interval SECS] [--runs N] [--json FILE] [--skip-runc]
//! ```
//!
//! A third row moves the same container through a registry on a third
//! host: its checkpoint travels as an OCI image, pushed on A, pulled on B.
//!
//! The container is the classic busybox counter,
//! `/bin/sh -c 'i=0; while true; do echo $i; i=$(expr $i + 1); sleep 1; done'`
//! (the interval is configurable), with its own PID, mount, UTS, IPC and
//! network namespaces, a root filesystem made from Debian's busybox-static,
//! and its output going to a log file on the host (bind-mounted at `/log`).
//! It is checkpointed on host A, its images cross a TCP connection, and it
//! is restored on host B; the count must go on from the last number printed
//! before the checkpoint plus one.
//!
//! The same container is then run by runc (the engine under Docker and
//! Podman, which drives CRIU itself): `runc checkpoint` on host A, the same
//! image transfer code, `runc restore` on host B.
//!
//! busybox's shell has no clock, so the downtime is observed from outside:
//! a host thread polls the log every millisecond and reports the largest
//! gap between two new lines (this includes one ordinary interval).

use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu::transfer;
use criu_testkit::close_inherited_fds;
use criu_testkit::container::{
    consecutive, make_rootfs, numbers, wait_lines, OwnContainer, SCRIPT,
};
use criu_testkit::hosts::{netns_of, TwoHosts};
use criu_testkit::measure::DumpTimes;
use serde::Serialize;

#[derive(Parser)]
#[command(
    about = "Migrate a busybox container between two netns hosts, with criu-rs and with runc"
)]
struct Cli {
    /// Seconds between counter lines (busybox sleep takes fractions).
    #[arg(long, default_value = "0.1")]
    interval: String,
    /// How long the container counts on host A first, in ms.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Write the two result objects (a JSON array) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only the criu-rs migration.
    #[arg(long)]
    skip_runc: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    engine: String,
    strategy: String,
    workload: String,
    rss_bytes: u64,
    #[serde(flatten)]
    criu: DumpTimes,
    dump_ms: f64,
    transfer_bytes: u64,
    transfer_ms: f64,
    restore_ms: f64,
    restore_time_us: Option<u64>,
    downtime_ms: f64,
    continued: bool,
    last_before: u64,
    first_after: u64,
    pid_before: i32,
    pid_after: i32,
    source_netns: u64,
    dest_netns: u64,
}

use criu_testkit::container::BoxError;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Watches the log from the host and remembers when each line appeared.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(Instant, usize)>>>,
}

impl Watcher {
    fn start(log: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            while !flag.load(Ordering::Relaxed) {
                let n = fs::read_to_string(&log)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                if n != last {
                    seen.push((Instant::now(), n));
                    last = n;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        Watcher {
            stop,
            handle: Some(handle),
        }
    }

    /// The largest gap between two appearances of new lines, in ms.
    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        seen.windows(2)
            .map(|w| w[1].0.duration_since(w[0].0))
            .max()
            .map_or(0.0, ms)
    }
}

fn rss_of_tree(root: i32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Ok(s) = fs::read_to_string(format!("/proc/{p}/status")) {
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok()),
        );
    }
    total
}

fn run_criu_rs(cli: &Cli, work: &Path) -> Result<Row, BoxError> {
    let dir = work.join("criu-rs");
    let (rootfs_a, rootfs_b, logdir) =
        (dir.join("rootfs-a"), dir.join("rootfs-b"), dir.join("log"));
    make_rootfs(&rootfs_a)?;
    make_rootfs(&rootfs_b)?;
    fs::create_dir_all(&logdir)?;
    let log = logdir.join("counter.log");
    let hosts = TwoHosts::new()?;
    let mut container = hosts
        .a
        .run(|| OwnContainer::start(&dir, &rootfs_a, &logdir, &cli.interval))?
        .map_err(|e| e.to_string())?;
    let pid_before = container.init;
    wait_lines(&log, 3, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(cli.warmup_ms));
    let rss = rss_of_tree(pid_before);
    let source_netns = netns_of(pid_before)?;
    let (src_dir, dst_dir) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&src_dir)?;
    fs::create_dir_all(&dst_dir)?;
    let watcher = Watcher::start(log.clone());
    let logdir_s = logdir.to_string_lossy().to_string();
    let run = hosts.migrate(
        pid_before,
        || {
            SourceConfig::new(Strategy::StopAndCopy, &src_dir).customize(|o| {
                o.add_ext_mount("/log", "logdir");
            })
        },
        || {
            DestConfig::new(&dst_dir).customize(move |o| {
                o.root(&rootfs_b).add_ext_mount("logdir", logdir_s.clone());
            })
        },
        None,
    )?;
    let src = run.src?;
    let dst = run.dst?;
    let _ = container.unshare.wait();
    let before = numbers(&log);
    let last_before = before.last().copied().unwrap_or(0);
    wait_lines(&log, before.len() + 5, Duration::from_secs(30))?;
    let downtime_ms = watcher.finish();
    let nums = numbers(&log);
    let first_after = nums.get(before.len()).copied().unwrap_or(0);
    let pid_after = dst.child.pid();
    let dest_netns = netns_of(pid_after)?;
    drop(dst);
    Ok(Row {
        engine: "criu-rs".into(),
        strategy: "stop-and-copy".into(),
        workload: format!("busybox counter, interval {}s", cli.interval),
        rss_bytes: rss,
        criu: DumpTimes::of(src.dump.stats.as_ref()),
        dump_ms: ms(src.dump.wall_time),
        transfer_bytes: src.transfer.bytes,
        transfer_ms: ms(src.transfer.elapsed),
        restore_ms: ms(src.restore_wall),
        restore_time_us: src.restore_time_us,
        downtime_ms,
        continued: consecutive(&nums) && first_after == last_before + 1,
        last_before,
        first_after,
        pid_before,
        pid_after,
        source_netns,
        dest_netns,
    })
}

/// The criu-rs container move, through a registry on a third host: the
/// checkpoint travels as an OCI image (push on A, pull on B).
fn run_registry(cli: &Cli, work: &Path) -> Result<Row, BoxError> {
    let dir = work.join("registry");
    let (rootfs_a, rootfs_b, logdir) =
        (dir.join("rootfs-a"), dir.join("rootfs-b"), dir.join("log"));
    make_rootfs(&rootfs_a)?;
    make_rootfs(&rootfs_b)?;
    fs::create_dir_all(&logdir)?;
    let log = logdir.join("counter.log");
    let hosts = TwoHosts::new()?;
    let registry = criu_testkit::registry::RegistryHost::start(&hosts, None)?;
    let mut container = hosts
        .a
        .run(|| OwnContainer::start(&dir, &rootfs_a, &logdir, &cli.interval))?
        .map_err(|e| e.to_string())?;
    let pid_before = container.init;
    wait_lines(&log, 3, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(cli.warmup_ms));
    let rss = rss_of_tree(pid_before);
    let source_netns = netns_of(pid_before)?;
    let (src_dir, dst_dir) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&src_dir)?;
    fs::create_dir_all(&dst_dir)?;
    let watcher = Watcher::start(log.clone());
    let logdir_s = logdir.to_string_lossy().to_string();
    let m = criu_testkit::registry::Move {
        pid: pid_before,
        name: "busybox-counter",
        src_dir: &src_dir,
        dst_dir: &dst_dir,
        compression: criu_testkit::registry::Compression::None,
    };
    let (pushed, restored) = criu_testkit::registry::move_through_registry(
        &hosts,
        &registry,
        &m,
        |o| {
            o.add_ext_mount("/log", "logdir");
        },
        |o| {
            o.root(&rootfs_b).add_ext_mount("logdir", logdir_s.clone());
        },
    )?;
    let (dump_ms, criu_times) = (
        ms(pushed.dump.wall_time),
        DumpTimes::of(pushed.dump.stats.as_ref()),
    );
    let (sent, xfer_ms) = (
        pushed.image_bytes,
        ms(pushed.push.elapsed) + ms(restored.pull.elapsed),
    );
    pushed.finish();
    let _ = container.unshare.wait();
    let before = numbers(&log);
    let last_before = before.last().copied().unwrap_or(0);
    wait_lines(&log, before.len() + 5, Duration::from_secs(30))?;
    let downtime_ms = watcher.finish();
    let nums = numbers(&log);
    let first_after = nums.get(before.len()).copied().unwrap_or(0);
    let pid_after = restored.child.pid();
    let dest_netns = netns_of(pid_after)?;
    Ok(Row {
        engine: "registry".into(),
        strategy: "oci-image".into(),
        workload: format!("busybox counter, interval {}s", cli.interval),
        rss_bytes: rss,
        criu: criu_times,
        dump_ms,
        transfer_bytes: sent,
        transfer_ms: xfer_ms,
        restore_ms: ms(restored.restore.wall_time),
        restore_time_us: restored
            .restore
            .stats
            .map(|s| s.restore_time.as_micros() as u64),
        downtime_ms,
        continued: consecutive(&nums) && first_after == last_before + 1,
        last_before,
        first_after,
        pid_before,
        pid_after,
        source_netns,
        dest_netns,
    })
}

fn runc(args: &[&str], cwd: &Path) -> Result<String, BoxError> {
    let mut cmd = Command::new("runc");
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    close_inherited_fds(&mut cmd);
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "runc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn runc_pid(id: &str, cwd: &Path) -> Result<i32, BoxError> {
    let state: serde_json::Value = serde_json::from_str(&runc(&["state", id], cwd)?)?;
    Ok(state["pid"].as_i64().ok_or("runc state has no pid")? as i32)
}

/// An OCI bundle for the same container, written with serde_json.
fn make_bundle(bundle: &Path, logdir: &Path, interval: &str) -> Result<(), BoxError> {
    make_rootfs(&bundle.join("rootfs"))?;
    let script = SCRIPT.replace("INTERVAL", interval);
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", format!("exec </dev/null >>/log/counter.log 2>&1; {script}")],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "counter",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/log", "type": "bind", "source": logdir, "options": ["rbind", "rw"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

/// Removes runc containers by id on drop (and their cgroups with them).
struct RuncGuard(Vec<String>, PathBuf);

impl Drop for RuncGuard {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = runc(&["delete", "--force", id], &self.1);
        }
    }
}

fn run_runc(cli: &Cli, work: &Path) -> Result<Row, BoxError> {
    let dir = work.join("runc");
    let logdir = dir.join("log");
    fs::create_dir_all(&logdir)?;
    let log = logdir.join("counter.log");
    let (bundle_a, bundle_b) = (dir.join("bundle-a"), dir.join("bundle-b"));
    make_bundle(&bundle_a, &logdir, &cli.interval)?;
    make_bundle(&bundle_b, &logdir, &cli.interval)?;
    let tag = std::process::id();
    let (id_a, id_b) = (format!("criu-rs-{tag}-a"), format!("criu-rs-{tag}-b"));
    let _guard = RuncGuard(vec![id_a.clone(), id_b.clone()], dir.clone());
    let hosts = TwoHosts::new()?;
    hosts
        .a
        .run(|| runc(&["run", "--detach", &id_a], &bundle_a))?
        .map_err(|e| e.to_string())?;
    let pid_before = runc_pid(&id_a, &dir)?;
    wait_lines(&log, 3, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(cli.warmup_ms));
    let rss = rss_of_tree(pid_before);
    let source_netns = netns_of(pid_before)?;
    let (img_a, work_a, img_b, work_b) = (
        dir.join("img-a"),
        dir.join("work-a"),
        dir.join("img-b"),
        dir.join("work-b"),
    );
    let watcher = Watcher::start(log.clone());

    // Checkpoint on host A.
    let t = Instant::now();
    hosts
        .a
        .run(|| {
            runc(
                &[
                    "checkpoint",
                    "--image-path",
                    path(&img_a),
                    "--work-path",
                    path(&work_a),
                    &id_a,
                ],
                &dir,
            )
        })?
        .map_err(|e| e.to_string())?;
    let dump = t.elapsed();
    let before = numbers(&log);
    let last_before = before.last().copied().unwrap_or(0);

    // The same transfer code as criu-rs's migration, over TCP from A to B.
    let listener = hosts.b.run(|| TcpListener::bind((hosts.b.addr, 0)))??;
    let addr = listener.local_addr()?;
    let sent = std::thread::scope(|s| -> Result<transfer::TransferStats, String> {
        let recv = s.spawn(|| {
            hosts.b.run(|| -> criu::Result<_> {
                let (mut stream, _) = listener.accept().map_err(|e| criu::Error::Io {
                    what: "accept".into(),
                    source: e,
                })?;
                transfer::read_header(&mut stream)?;
                transfer::receive_dir(&mut stream, &img_b, None)
            })
        });
        let sent = hosts
            .a
            .run(|| -> criu::Result<_> {
                let mut stream = TcpStream::connect(addr).map_err(|e| criu::Error::Io {
                    what: "connect".into(),
                    source: e,
                })?;
                transfer::write_header(&mut stream)?;
                let s = transfer::send_dir(&mut stream, &img_a, None)?;
                stream.flush().map_err(|e| criu::Error::Io {
                    what: "flush".into(),
                    source: e,
                })?;
                Ok(s)
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        recv.join()
            .map_err(|_| "receiver panicked")?
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(sent)
    })?;

    // Restore on host B.
    let t = Instant::now();
    hosts
        .b
        .run(|| {
            runc(
                &[
                    "restore",
                    "--detach",
                    "--image-path",
                    path(&img_b),
                    "--work-path",
                    path(&work_b),
                    "--bundle",
                    path(&bundle_b),
                    &id_b,
                ],
                &dir,
            )
        })?
        .map_err(|e| e.to_string())?;
    let restore = t.elapsed();
    let pid_after = runc_pid(&id_b, &dir)?;
    wait_lines(&log, before.len() + 5, Duration::from_secs(30))?;
    let downtime_ms = watcher.finish();
    let nums = numbers(&log);
    let first_after = nums.get(before.len()).copied().unwrap_or(0);
    let dest_netns = netns_of(pid_after)?;
    let dstats = criu::ImagesDir::open(&work_a)?
        .dump_stats()?
        .and_then(|s| s.dump);
    let rstats = criu::ImagesDir::open(&work_b)?
        .restore_stats()?
        .and_then(|s| s.restore);
    Ok(Row {
        engine: "runc".into(),
        strategy: "stop-and-copy".into(),
        workload: format!("busybox counter, interval {}s", cli.interval),
        rss_bytes: rss,
        criu: DumpTimes::of(dstats.as_ref()),
        dump_ms: ms(dump),
        transfer_bytes: sent.bytes,
        transfer_ms: ms(sent.elapsed),
        restore_ms: ms(restore),
        restore_time_us: rstats.map(|s| s.restore_time.as_micros() as u64),
        downtime_ms,
        continued: consecutive(&nums) && first_after == last_before + 1,
        last_before,
        first_after,
        pid_before,
        pid_after,
        source_netns,
        dest_netns,
    })
}

/// One way of migrating the container.
type Engine = fn(&Cli, &Path) -> Result<Row, BoxError>;

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.interval.parse::<f64>().map_or(true, |v| v <= 0.0) {
        eprintln!("error: --interval takes a positive number of seconds");
        return std::process::ExitCode::from(2);
    }
    let work = match tempfile::Builder::new()
        .prefix("criu-rs-container-")
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    let mut failed = false;
    let mut engines: Vec<(&str, Engine)> = vec![("criu-rs", run_criu_rs)];
    if !cli.skip_runc {
        engines.push(("runc", run_runc));
    }
    engines.push(("registry", run_registry));
    for (name, f) in engines {
        eprintln!("migrating the busybox container with {name}...");
        match f(&cli, work.path()) {
            Ok(r) => {
                failed |= !r.continued;
                rows.push(r);
            }
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}  {:<26} netns a -> b",
        "engine",
        "rss KiB",
        "dump ms",
        "frozen ms",
        "sent KiB",
        "xfer ms",
        "restore ms",
        "downtime ms",
        "count",
    );
    for r in &rows {
        println!(
            "{:<8} {:>8} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>10.1} {:>11.1}  {:<26} {} -> {}",
            r.engine,
            r.rss_bytes / 1024,
            r.dump_ms,
            r.criu
                .frozen_time_us
                .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0)),
            r.transfer_bytes as f64 / 1024.0,
            r.transfer_ms,
            r.restore_ms,
            r.downtime_ms,
            format!(
                "{} -> {} ({})",
                r.last_before,
                r.first_after,
                if r.continued { "ok" } else { "BROKEN" }
            ),
            r.source_netns,
            r.dest_netns
        );
    }
    let by = |e: &str| rows.iter().find(|r| r.engine == e);
    if let (Some(a), Some(b)) = (by("criu-rs"), by("runc")) {
        println!(
            "criu-rs / runc: dump {:.2}x, restore {:.2}x, downtime {:.2}x",
            a.dump_ms / b.dump_ms.max(0.001),
            a.restore_ms / b.restore_ms.max(0.001),
            a.downtime_ms / b.downtime_ms.max(0.001)
        );
    }
    if let Some(p) = &cli.json {
        if let Err(e) = serde_json::to_string_pretty(&rows)
            .map_err(io::Error::other)
            .and_then(|t| fs::write(p, t + "\n"))
        {
            eprintln!("error: writing {}: {e}", p.display());
            failed = true;
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
