//! One measured migration of the counting workload between two fresh
//! network-namespace hosts: shared by `examples/migrate` and the migration
//! benchmark.

use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, SourceReport, Strategy};
use serde::Serialize;

use crate::container::BoxError;
use crate::hosts::{netns_of, TwoHosts};
use crate::link::{DemoLinks, Security};
use crate::{continued_past, existing_workload_bin, longest_gap_ns, Workload};

/// The counting workload, started in its own PID namespace on host a of
/// fresh hosts and left to run for its warm-up: where every measured move
/// begins.
pub struct Started {
    /// The workload (on host a until moved).
    pub workload: Workload,
    /// Host a (the source) and host b.
    pub hosts: TwoHosts,
    /// The workload's memory checksum before the move.
    pub checksum: Option<String>,
    /// Its pid before the move.
    pub pid: i32,
    /// Its resident memory before the move.
    pub rss: u64,
    /// Host a's network namespace.
    pub netns: u64,
    dir: tempfile::TempDir,
}

/// What a moved workload showed on host b.
pub struct Observed {
    /// Its pid there.
    pub pid_after: i32,
    /// The count went on by one past where it stopped.
    pub continued: bool,
    /// The longest gap between two ticks, in ns: the downtime it saw.
    pub downtime_ns: u128,
    /// Its memory pattern after the move (`None` without memory).
    pub memory_intact: Option<bool>,
    /// Host b's network namespace.
    pub dest_netns: u64,
}

impl Started {
    /// Starts the workload (`mib` MiB of patterned memory) on fresh hosts
    /// and lets it run for `warmup`; its files live in a temporary
    /// directory named `prefix...`.
    pub fn new(prefix: &str, mib: usize, warmup: Duration) -> Result<Started, BoxError> {
        let bin = existing_workload_bin()?;
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let hosts = TwoHosts::new()?;
        let out = dir.path().join("counter.log");
        let workload = hosts
            .a
            .run(|| Workload::spawn_in_pid_ns(&bin, &out, Duration::from_millis(1), mib))??;
        let checksum = workload.memory_checksum();
        std::thread::sleep(warmup);
        let pid = workload.pid();
        Ok(Started {
            rss: rss_bytes(pid),
            netns: netns_of(pid)?,
            workload,
            hosts,
            checksum,
            pid,
            dir,
        })
    }

    /// A directory for the move's own files, removed with `self`.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Once the workload was moved to `pid_after` (and the source killed):
    /// reaps the source, waits for 200 more ticks, and checks the count
    /// and (with `mib` > 0) the memory.
    pub fn observe(&mut self, pid_after: i32, mib: usize) -> Result<Observed, BoxError> {
        let w = &mut self.workload;
        w.reap(Duration::from_secs(10))?;
        let seq_at_stop = w.last_seq();
        let dest_netns = netns_of(pid_after)?;
        w.wait_for_seq(seq_at_stop + 200, Duration::from_secs(60))?;
        let ticks = w.ticks();
        let memory_intact = if mib > 0 {
            let (sum, ok) = w.verify_memory(pid_after, Duration::from_secs(120))?;
            Some(ok && Some(sum) == self.checksum)
        } else {
            None
        };
        Ok(Observed {
            pid_after,
            continued: continued_past(&ticks, seq_at_stop),
            downtime_ns: longest_gap_ns(&ticks),
            memory_intact,
            dest_netns,
        })
    }
}

/// One migration's cost, with the field names the project publishes.
#[derive(Debug, Clone, Default, Serialize)]
#[allow(missing_docs)]
pub struct Row {
    pub strategy: String,
    /// `plain` or `tls`.
    pub transport: String,
    pub workload: String,
    #[serde(flatten)]
    pub cost: Cost,
    pub continued: bool,
    pub memory_intact: Option<bool>,
    pub pid_before: i32,
    pub pid_after: i32,
    pub source_netns: u64,
    pub dest_netns: u64,
    /// Where the downtime went (`criu::migrate::Phases`, in µs), plus
    /// `resume_us`: the application's gap that the migration's own phases
    /// do not explain (its first tick after the restore). `None` for
    /// moves that are not a `criu::migrate` migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<RowPhases>,
}

/// A migration's phases and the application's resume, in µs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[allow(missing_docs)]
pub struct RowPhases {
    #[serde(flatten)]
    pub migration: criu::migrate::Phases,
    pub resume_us: u64,
    /// The registry route's own phases (its `transfer` is zero: the
    /// images travel in these).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryPhases>,
}

/// Where the registry route's transfer goes, in µs: after the dump, the
/// wait for the last pages parts (`push_parts`), then the archive of the
/// other images, the image config and the manifest (`push_rest`); the
/// destination's manifest and archive (`pull`), its pages parts, fetched,
/// checked against their digests and written (`pull_parts`), and what
/// unpacking took beyond the download (`unpack`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[allow(missing_docs)]
pub struct RegistryPhases {
    pub push_parts_us: u64,
    pub push_rest_us: u64,
    pub pull_us: u64,
    pub pull_parts_us: u64,
    pub unpack_us: u64,
}

/// What one migration cost, phase by phase, under the field names the
/// project publishes (shared by the process and container migrations).
#[derive(Debug, Clone, Default, Serialize)]
#[allow(missing_docs)]
pub struct Cost {
    pub rss_bytes: u64,
    #[serde(flatten)]
    pub criu: DumpTimes,
    pub dump_ms: f64,
    pub transfer_bytes: u64,
    pub transfer_ms: f64,
    pub restore_ms: f64,
    pub restore_time_us: Option<u64>,
    pub downtime_ms: f64,
}

/// CRIU's own timings of a dump (absent when CRIU wrote none, as after a
/// lazy dump), under the field names the project publishes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[allow(missing_docs)]
pub struct DumpTimes {
    pub freezing_time_us: Option<u64>,
    pub frozen_time_us: Option<u64>,
    pub memdump_time_us: Option<u64>,
    pub memwrite_time_us: Option<u64>,
    pub pages_written: Option<u64>,
}

impl DumpTimes {
    /// From CRIU's dump statistics, if it wrote any.
    pub fn of(stats: Option<&criu::DumpStats>) -> DumpTimes {
        let us = |d: Duration| Some(d.as_micros() as u64);
        stats.map_or_else(DumpTimes::default, |s| DumpTimes {
            freezing_time_us: us(s.freezing_time),
            frozen_time_us: us(s.frozen_time),
            memdump_time_us: us(s.memdump_time),
            memwrite_time_us: us(s.memwrite_time),
            pages_written: Some(s.pages_written),
        })
    }
}

impl Row {
    /// What the source's report tells, with the downtime as the source
    /// sees it (from stopping the tree to the destination's "restored");
    /// the caller fills in what it measured on the workload itself.
    pub fn of(src: &SourceReport, transport: &str, workload: &str) -> Row {
        Row {
            strategy: src.strategy.to_string(),
            transport: transport.to_string(),
            workload: workload.to_string(),
            cost: Cost {
                rss_bytes: 0,
                criu: DumpTimes::of(src.dump.stats.as_ref()),
                dump_ms: ms(src.dump.wall_time),
                transfer_bytes: src.transfer.bytes + src.page_server_bytes,
                transfer_ms: ms(src.transfer.elapsed),
                restore_ms: ms(src.restore_wall),
                restore_time_us: src.restore_time_us,
                downtime_ms: ms(src.stopped_to_restored),
            },
            continued: false,
            memory_intact: None,
            pid_before: src.pid,
            pid_after: src.restored_pid,
            source_netns: 0,
            dest_netns: 0,
            phases: Some(RowPhases {
                migration: src.phases,
                resume_us: 0,
                registry: None,
            }),
        }
    }

    /// This row completed with what a move of the `started` workload
    /// showed (`seen`): its pids, size and network namespaces before and
    /// after, whether it went on, its memory, and the downtime it saw.
    pub fn observed(self, started: &Started, seen: &Observed) -> Row {
        Row {
            cost: Cost {
                rss_bytes: started.rss,
                downtime_ms: seen.downtime_ns as f64 / 1e6,
                ..self.cost
            },
            continued: seen.continued,
            memory_intact: seen.memory_intact,
            pid_before: started.pid,
            pid_after: seen.pid_after,
            source_netns: started.netns,
            dest_netns: seen.dest_netns,
            ..self
        }
    }
}

/// Milliseconds, to 0.01.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Starts the workload (`mib` MiB of patterned memory, 0 for the bare
/// counter) on host a of fresh hosts, lets it run for `warmup`, migrates it
/// to host b with `strategy` over plain TCP or mutual TLS (with throwaway
/// certificates), through the steps of the two commands of
/// `examples/migrate_host`, checks that it goes on, and measures the cost.
/// `progress` sees the bytes of images sent.
pub fn migrate_workload_over(
    security: Security,
    strategy: Strategy,
    workload: &str,
    mib: usize,
    warmup: Duration,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<Row, BoxError> {
    migrate_workload_with(
        security,
        strategy,
        DestConfig::new,
        workload,
        mib,
        warmup,
        progress,
    )
}

/// [`migrate_workload_over`] with the destination's settings from `dest`
/// (the images still in memory on both hosts).
pub fn migrate_workload_with<'a>(
    security: Security,
    strategy: Strategy,
    dest: impl FnOnce() -> DestConfig<'a> + Send,
    workload: &str,
    mib: usize,
    warmup: Duration,
    progress: impl FnMut(u64, u64) + Send + 'a,
) -> Result<Row, BoxError> {
    let links = DemoLinks::new(security)?;
    let mut started = Started::new("criu-rs-migrate-", mib, warmup)?;
    let pid_before = started.pid;
    let run = started.hosts.migrate_over(
        [&links.a, &links.b],
        pid_before,
        // The images live in memory on both hosts (no disk in the path),
        // in private tmpfs directories removed when each side returns.
        || SourceConfig::new(strategy).progress(progress),
        dest,
        None,
    )?;
    let (src, dst) = (run.src, run.dst);
    let src = src?;
    let dst = dst?;
    let pid_after = dst.child.pid();
    let seen = started.observe(pid_after, mib)?;
    drop(dst.child);
    // The application's gap beyond the migration's own phases.
    let resume_us = (seen.downtime_ns / 1000).saturating_sub(src.stopped_to_restored.as_micros());
    Ok(Row {
        phases: Some(RowPhases {
            migration: src.phases,
            resume_us: u64::try_from(resume_us).unwrap_or(u64::MAX),
            registry: None,
        }),
        ..Row::of(&src, links.a.name(), workload).observed(&started, &seen)
    })
}
