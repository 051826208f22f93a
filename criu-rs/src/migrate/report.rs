//! What each side of a migration reports.

use std::time::Duration;

use serde::Serialize;

use crate::child::RestoredChild;
use crate::report::{DumpReport, RestoreReport};
use crate::transfer::TransferStats;

/// What the source saw.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SourceReport {
    /// The strategy used: its name (a built-in's is its [`Strategy`](super::Strategy)'s
    /// [`name`](super::Strategy::name)).
    pub strategy: String,
    /// The source root pid.
    pub pid: i32,
    /// The dump (statistics are absent for lazy dumps, see [`DumpReport`]).
    pub dump: DumpReport,
    /// Images sent over the stream.
    pub transfer: TransferStats,
    /// Memory the strategy carried beside the stream, in bytes: for the
    /// page-server strategy the private and the shared pages CRIU wrote
    /// into the page server (another strategy says what it counts, see
    /// `strategy::Restored::carried_beside`). With
    /// [`SourceReport::transfer`]'s bytes, what the migration carried.
    pub page_server_bytes: u64,
    /// The root pid on the destination.
    pub restored_pid: i32,
    /// The destination's restore wall time.
    #[serde(serialize_with = "crate::report::micros")]
    pub restore_wall: Duration,
    /// CRIU's `restore_time` on the destination, when reported.
    pub restore_time_us: Option<u64>,
    /// From stopping the source to the destination's "restored".
    #[serde(serialize_with = "crate::report::micros")]
    pub stopped_to_restored: Duration,
    /// The whole migration, until the source was gone.
    #[serde(serialize_with = "crate::report::micros")]
    pub total: Duration,
    /// Where [`SourceReport::stopped_to_restored`] went, phase by phase.
    pub phases: Phases,
}

/// Where a migration's downtime went: the phases from the source's stop
/// (at CRIU's pre-dump notification) to the destination's "restored", in
/// the order they happen. They add up to
/// [`SourceReport::stopped_to_restored`]; what the application sees on top
/// is the time its first instructions take after the restore.
///
/// CRIU's own four (freeze, frozen, memory dump, memory write) come from
/// its dump statistics and are `None` when it wrote none (a lazy dump:
/// CRIU resets its counters when it starts serving pages); the dump's time
/// they do not explain is in `dump_other`. In JSON each is `<name>_us`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Phases {
    /// CRIU stopping every task of the tree (`freezing_time`).
    #[serde(rename = "freeze_us", serialize_with = "crate::stats::opt_micros")]
    pub freeze: Option<Duration>,
    /// CRIU's frozen time less its memory dump (which holds the write): collecting and
    /// writing everything but the memory pages (namespaces, files, the
    /// network lock, ...).
    #[serde(rename = "frozen_us", serialize_with = "crate::stats::opt_micros")]
    pub frozen: Option<Duration>,
    /// CRIU collecting the memory pages: `memdump_time` less the write
    /// that CRIU times inside it.
    #[serde(rename = "memory_dump_us", serialize_with = "crate::stats::opt_micros")]
    pub memory_dump: Option<Duration>,
    /// CRIU writing the pages (`memwrite_time`): into the images, or for
    /// the page-server strategy over the network into the page server.
    #[serde(
        rename = "memory_write_us",
        serialize_with = "crate::stats::opt_micros"
    )]
    pub memory_write: Option<Duration>,
    /// The rest of the dump until its images were complete: CRIU before
    /// the freeze and after the tasks were unfrozen (writing its last
    /// images, exiting), or the whole dump without CRIU's statistics.
    #[serde(rename = "dump_other_us", serialize_with = "crate::report::micros")]
    pub dump_other: Duration,
    /// Sending the images over the stream.
    #[serde(rename = "transfer_us", serialize_with = "crate::report::micros")]
    pub transfer: Duration,
    /// The destination's restore, as it timed it.
    #[serde(rename = "restore_us", serialize_with = "crate::report::micros")]
    pub restore: Duration,
    /// What the others leave: the messages between the hosts, and what a
    /// strategy does between the images and the restore (lazy: starting
    /// the destination's lazy-pages daemon, which connects to the source).
    #[serde(rename = "handoff_us", serialize_with = "crate::report::micros")]
    pub handoff: Duration,
}

impl Phases {
    /// Splits `stopped_to_restored` along the dump's statistics: `dump` is
    /// from the stop to complete images, `transfer` sending them,
    /// `restore` the destination's restore.
    pub(super) fn split(
        dump_report: &DumpReport,
        dump: Duration,
        transfer: Duration,
        restore: Duration,
        stopped_to_restored: Duration,
    ) -> Phases {
        let criu = dump_report.stats.as_ref();
        // CRIU times the page writes inside its memory dump (memwrite is
        // part of memdump) and both inside its frozen time: split them so
        // that the phases do not overlap.
        let memory_write = criu.map(|s| s.memwrite_time.min(s.memdump_time));
        let memory_dump = criu.map(|s| s.memdump_time.saturating_sub(s.memwrite_time));
        let frozen = criu.map(|s| s.frozen_time.saturating_sub(s.memdump_time));
        let freeze = criu.map(|s| s.freezing_time);
        let in_criu = [freeze, frozen, memory_dump, memory_write]
            .into_iter()
            .flatten()
            .sum::<Duration>();
        Phases {
            freeze,
            frozen,
            memory_dump,
            memory_write,
            dump_other: dump.saturating_sub(in_criu),
            transfer,
            restore,
            handoff: stopped_to_restored
                .saturating_sub(dump.max(in_criu))
                .saturating_sub(transfer)
                .saturating_sub(restore),
        }
    }
}

/// What the destination did.
#[derive(Debug)]
#[non_exhaustive]
pub struct DestReport {
    /// The strategy used: its name (a built-in's is its [`Strategy`](super::Strategy)'s
    /// [`name`](super::Strategy::name)).
    pub strategy: String,
    /// The restored root task, a child of the destination process.
    pub child: RestoredChild,
    /// The restore.
    pub restore: RestoreReport,
    /// Images received over the stream.
    pub transfer: TransferStats,
    /// Whether the source confirmed (`Done`) that it stops its copy. When
    /// false, the source went silent after the restore: the restored copy
    /// was kept rather than risk losing the tree, and the source's copy
    /// may be running too. Check it before relying on one copy.
    pub source_confirmed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DumpStats;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn dump_with(freezing: u64, frozen: u64, memdump: u64, memwrite: u64) -> DumpReport {
        DumpReport {
            pid: 1,
            wall_time: ms(0),
            iterations: 0,
            stats: Some(DumpStats {
                freezing_time: ms(freezing),
                frozen_time: ms(frozen),
                memdump_time: ms(memdump),
                memwrite_time: ms(memwrite),
                pages_scanned: 1,
                pages_skipped_parent: 0,
                pages_written: 1,
                irmap_resolve: None,
                pages_lazy: 0,
                page_pipes: None,
                page_pipe_bufs: None,
                shpages_scanned: None,
                shpages_skipped_parent: None,
                shpages_written: None,
            }),
        }
    }

    fn sum(p: &Phases) -> Duration {
        [p.freeze, p.frozen, p.memory_dump, p.memory_write]
            .into_iter()
            .flatten()
            .sum::<Duration>()
            + p.dump_other
            + p.transfer
            + p.restore
            + p.handoff
    }

    #[test]
    fn phases_add_up_to_stopped_to_restored() {
        let p = Phases::split(&dump_with(2, 50, 20, 10), ms(60), ms(30), ms(40), ms(140));
        assert_eq!(p.freeze, Some(ms(2)));
        assert_eq!(p.frozen, Some(ms(30)));
        assert_eq!(p.memory_dump, Some(ms(10)));
        assert_eq!(p.memory_write, Some(ms(10)));
        assert_eq!(p.dump_other, ms(8));
        assert_eq!(p.handoff, ms(10));
        assert_eq!(sum(&p), ms(140));
    }

    #[test]
    fn memory_phases_longer_than_frozen_still_add_up() {
        // CRIU's memory dump exceeds its frozen time (separate clocks):
        // frozen's rest is 0 and the sum still holds.
        let p = Phases::split(&dump_with(1, 30, 35, 15), ms(50), ms(5), ms(20), ms(80));
        assert_eq!(p.frozen, Some(ms(0)));
        assert_eq!(p.memory_dump, Some(ms(20)));
        assert_eq!(p.dump_other, ms(14));
        assert_eq!(sum(&p), ms(80));
    }

    #[test]
    fn without_statistics_the_dump_is_one_phase() {
        let mut d = dump_with(0, 0, 0, 0);
        d.stats = None;
        let p = Phases::split(&d, ms(45), ms(1), ms(25), ms(100));
        assert_eq!((p.freeze, p.frozen), (None, None));
        assert_eq!(p.dump_other, ms(45));
        assert_eq!(p.handoff, ms(29));
        let json = serde_json::to_value(p).unwrap();
        assert!(json["freeze_us"].is_null());
        assert_eq!(json["restore_us"], 25_000);
    }
}
