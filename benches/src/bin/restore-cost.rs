//! Where a migration's restore time goes: the memory workload moved
//! between two network-namespace hosts of this machine with each strategy
//! and transport given, interleaved, printing per run the destination's
//! restore wall time beside the CPU time the restored task spent in it
//! (its `utime + stime` right after the restore: CRIU's restorer reads
//! the pages into the task's memory in the task itself), and the machine's
//! load.
//!
//! Run as root: `cargo run --release -p criu-rs-benches --bin
//! restore-cost -- MIB REPS [strategy,...] [plain,tls]`. With
//! `RESTORE_COST_TRACE=1` it also prints, for every 100 ms in which the
//! restored task ran, the other threads that ran and their ticks, and
//! the `/proc/vmstat` counters that grew meanwhile (`pgalloc_dma32`
//! against `pgalloc_normal` tells which zone the restore's memory came
//! from). See BENCHMARKS.md, "Where stop-and-copy's restore time goes".

use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu_testkit::link::{DemoLinks, Security};
use criu_testkit::measure::Started;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(1024), |a| a.parse())?;
    let reps: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let strategies: Vec<Strategy> = args
        .next()
        .unwrap_or_else(|| "stop-and-copy,page-server".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let links: Vec<Security> = args
        .next()
        .unwrap_or_else(|| "plain".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    println!("strategy       link  restore ms  restored task cpu ms  transfer ms  load");
    for _ in 0..reps {
        for &security in &links {
            for &strategy in &strategies {
                run(strategy, security, mib)?;
            }
        }
    }
    Ok(())
}

fn run(strategy: Strategy, security: Security, mib: usize) -> Result<(), BoxError> {
    let links = DemoLinks::new(security)?;
    let mut started = Started::new("criu-rs-restore-cost-", mib, Duration::from_millis(500))?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (run, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_until(&stop));
        let run = started.hosts.migrate_over(
            [&links.a, &links.b],
            started.pid,
            || SourceConfig::new(strategy),
            DestConfig::new,
            None,
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (run, sampler.join().unwrap_or_default())
    });
    let run = run?;
    let (src, dst) = (run.src?, run.dst?);
    let cpu = task_cpu_ms(dst.child.pid());
    if std::env::var_os("RESTORE_COST_TRACE").is_some() {
        trace(&samples, dst.child.pid());
    }
    println!(
        "{:<14} {:<5} {:>10.0} {:>21} {:>12.0} {:>5}",
        strategy.to_string(),
        links.a.name(),
        src.restore_wall.as_secs_f64() * 1e3,
        cpu.map_or("-".into(), |c| c.to_string()),
        src.transfer.elapsed.as_secs_f64() * 1e3,
        load()
    );
    started.workload.reap(Duration::from_secs(10))?;
    drop(dst.child);
    Ok(())
}

/// Every thread's CPU ticks (`utime + stime`) and name, by (pid, tid).
/// (-1, n) holds /proc/vmstat's n-th counter, its name beside it.
type Snapshot = std::collections::HashMap<(i32, i32), (String, u64)>;

/// Snapshots every 100 ms until `stop`.
fn sample_until(stop: &std::sync::atomic::AtomicBool) -> Vec<Snapshot> {
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        out.push(snapshot());
        std::thread::sleep(Duration::from_millis(100));
    }
    out.push(snapshot());
    out
}

fn snapshot() -> Snapshot {
    let mut m = Snapshot::new();
    if let Ok(vm) = std::fs::read_to_string("/proc/vmstat") {
        for (i, l) in vm.lines().enumerate() {
            if let Some((k, v)) = l.split_once(' ') {
                m.insert((-1, i as i32), (k.to_string(), v.parse().unwrap_or(0)));
            }
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return m;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(a), Some(b)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let f: Vec<&str> = stat[b + 2..].split_whitespace().collect();
            let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
            m.insert((pid, tid), (stat[a + 1..b].to_string(), ticks));
        }
    }
    m
}

/// For every 100 ms interval in which task `restored` ran, the other
/// threads that ran too, with their ticks.
fn trace(samples: &[Snapshot], restored: i32) {
    let mut vm: std::collections::BTreeMap<String, u64> = Default::default();
    for w in samples.windows(2) {
        let d = |k: &(i32, i32)| {
            let now = w[1].get(k).map_or(0, |v| v.1);
            now.saturating_sub(w[0].get(k).map_or(0, |v| v.1))
        };
        let mine = d(&(restored, restored));
        if mine == 0 {
            continue;
        }
        for (k, v) in w[1].iter().filter(|(k, _)| k.0 == -1) {
            *vm.entry(v.0.clone()).or_default() += d(k);
        }
        let mut others: Vec<_> = w[1]
            .iter()
            .filter(|(k, _)| k.1 != restored && k.0 != -1)
            .map(|(k, v)| (d(k), k.1, v.0.clone()))
            .filter(|x| x.0 > 0)
            .collect();
        others.sort_by_key(|o| std::cmp::Reverse(o.0));
        let list: Vec<String> = others
            .iter()
            .take(6)
            .map(|(t, tid, n)| format!("{n}[{tid}]:{t}"))
            .collect();
        println!("  restored:{mine} others: {}", list.join(" "));
    }
    let vm: Vec<String> = vm
        .iter()
        .filter(|(_, v)| **v > 1000)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  vmstat while it ran: {}", vm.join(" "));
}

/// `utime + stime` of task `pid`, in ms.
fn task_cpu_ms(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(ticks * 1000 / hz.max(1))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}
