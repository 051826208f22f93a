//! Container engines behind one seam, and one measured migration of the
//! classic busybox counter between two network-namespace hosts.
//!
//! An [`Engine`] starts the counter on host a, migrates it to host b and
//! reads back what it printed; [`migrate_measured`] drives any engine the
//! same way and fills one [`Row`]. Inside:
//! - `busybox`: the counter's script and root filesystem, its log file;
//! - `own`: criu-rs's own container (unshare + pivot_root), moved by
//!   `criu::migrate`;
//! - `phased`: engines that checkpoint, carry the checkpoint to host b
//!   (over TCP with `criu::transfer`, or another way an engine chooses,
//!   such as a registry), then restore (written once for all of them);
//! - `runc`: runc, the engine under Docker and Podman;
//! - `docker`: Docker hosts (a `dockerd` per namespace) and the API;
//! - `watch`: downtime and memory, observed from the host.

mod busybox;
pub mod docker;
mod own;
mod phased;
mod runc;
mod watch;

use std::time::Duration;

use serde::Serialize;

use crate::hosts::{netns_of, TwoHosts};
use crate::measure::{ms, Cost, DumpTimes};

pub use busybox::{consecutive, make_rootfs, numbers, wait_lines, SCRIPT};
pub use docker::DockerEngine;
pub(crate) use own::OwnSetup;
pub use own::{OwnContainer, OwnEngine};
pub use phased::{migrate_phased, move_checkpoint, Carried, Checkpointed, Phased, Restored};
pub use runc::RuncEngine;
pub use watch::{rss_of_tree, FileWatcher};

/// Errors of this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long to wait for the counter to print what a step expects.
pub const WAIT: Duration = Duration::from_secs(30);

/// What a migration did, as the engine saw it.
#[derive(Debug, Default)]
pub struct Moved {
    /// CRIU's own dump timings.
    pub criu: DumpTimes,
    /// The checkpoint call's wall time.
    pub dump: Duration,
    /// Checkpoint bytes on the wire.
    pub transfer_bytes: u64,
    /// Time on the wire.
    pub transfer: Duration,
    /// The restore call's wall time.
    pub restore: Duration,
    /// CRIU's `restore_time`, when it left its statistics.
    pub restore_time_us: Option<u64>,
    /// How many numbers the source had printed when it stopped.
    pub lines_before: usize,
    /// The container's init on host b.
    pub pid_after: i32,
    /// What the registry cost, for moves through one.
    pub registry: Option<RegistryCost>,
}

/// What moving a checkpoint through a registry cost, beside the direct
/// moves' columns. Both directions stream: packing overlaps the push
/// (`push_ms` includes it; `pack_ms` is the packing thread's own time),
/// unpacking overlaps the pull (`unpack_ms` is only what it took beyond
/// the end of the download).
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct RegistryCost {
    pub pack_ms: f64,
    pub push_ms: f64,
    pub pull_ms: f64,
    pub unpack_ms: f64,
    pub image_bytes: u64,
}

/// Measures the application's downtime while a migration runs.
pub trait Downtime {
    /// The largest gap between two consecutive lines, in ms.
    fn finish(self: Box<Self>) -> Result<f64, BoxError>;
}

/// One container engine: it runs the busybox counter on host a and moves
/// it, alive, to host b.
pub trait Engine {
    /// The name in tables and JSON (`criu-rs`, `runc`, ...).
    fn name(&self) -> &'static str;
    /// Starts the counter on host a, printing every `interval` seconds;
    /// returns its init's pid (as seen from the machine).
    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError>;
    /// The numbers printed so far, by the source and then the restored
    /// container, in order.
    fn numbers(&self) -> Result<Vec<u64>, BoxError>;
    /// Starts observing the gaps between lines.
    fn downtime(&self) -> Box<dyn Downtime>;
    /// Moves the running counter from host a to host b.
    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError>;
}

/// One migration's cost, with the field names the project publishes.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct Row {
    pub engine: String,
    pub strategy: String,
    pub workload: String,
    #[serde(flatten)]
    pub cost: Cost,
    pub continued: bool,
    pub last_before: u64,
    pub first_after: u64,
    pub pid_before: i32,
    pub pid_after: i32,
    pub source_netns: u64,
    pub dest_netns: u64,
    /// Push, pull, pack and unpack, for moves through a registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryCost>,
}

/// Waits until the engine's counter has printed `n` numbers.
pub fn wait_numbers(engine: &dyn Engine, n: usize, timeout: Duration) -> Result<(), BoxError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let have = engine.numbers()?.len();
        if have >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{}: the counter printed {have} of {n} lines in {timeout:?}",
                engine.name()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the counter with `engine` on host a, lets it count for `warmup`,
/// migrates it to host b and checks that the count goes on from the last
/// number printed on a plus one.
pub fn migrate_measured(
    engine: &mut dyn Engine,
    hosts: &TwoHosts,
    interval: &str,
    warmup: Duration,
) -> Result<Row, BoxError> {
    let pid_before = engine.start(hosts, interval)?;
    wait_numbers(engine, 3, WAIT)?;
    std::thread::sleep(warmup);
    let rss_bytes = rss_of_tree(pid_before);
    let source_netns = netns_of(pid_before)?;
    // Held open, the source's namespace outlives the source, so that its
    // inode number cannot be reused for the destination's.
    let _source_ns = std::fs::File::open(format!("/proc/{pid_before}/ns/net"))?;
    let downtime = engine.downtime();
    let moved = engine.migrate(hosts)?;
    wait_numbers(engine, moved.lines_before + 5, WAIT)?;
    let downtime_ms = downtime.finish()?;
    let nums = engine.numbers()?;
    let last_before = moved
        .lines_before
        .checked_sub(1)
        .and_then(|i| nums.get(i).copied())
        .unwrap_or(0);
    let first_after = nums.get(moved.lines_before).copied().unwrap_or(0);
    let dest_netns = netns_of(moved.pid_after)?;
    let cost = Cost {
        rss_bytes,
        criu: moved.criu,
        dump_ms: ms(moved.dump),
        transfer_bytes: moved.transfer_bytes,
        transfer_ms: ms(moved.transfer),
        restore_ms: ms(moved.restore),
        restore_time_us: moved.restore_time_us,
        downtime_ms,
    };
    Ok(Row {
        engine: engine.name().into(),
        strategy: "stop-and-copy".into(),
        workload: format!("busybox counter, interval {interval}s"),
        cost,
        continued: consecutive(&nums) && first_after == last_before + 1,
        last_before,
        first_after,
        pid_before,
        pid_after: moved.pid_after,
        source_netns,
        dest_netns,
        registry: moved.registry,
    })
}
