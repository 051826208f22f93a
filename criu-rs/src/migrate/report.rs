//! What each side of a migration reports.

use std::time::Duration;

use serde::Serialize;

use super::strategy::Strategy;
use crate::child::RestoredChild;
use crate::report::{DumpReport, RestoreReport};
use crate::transfer::TransferStats;

/// What the source saw.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SourceReport {
    /// The strategy used.
    pub strategy: Strategy,
    /// The source root pid.
    pub pid: i32,
    /// The dump (statistics are absent for lazy dumps, see [`DumpReport`]).
    pub dump: DumpReport,
    /// Images sent over the stream.
    pub transfer: TransferStats,
    /// Memory pages sent to the page server (page-server strategy).
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
}

/// What the destination did.
#[derive(Debug)]
#[non_exhaustive]
pub struct DestReport {
    /// The strategy used.
    pub strategy: Strategy,
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
