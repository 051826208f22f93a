//! What each operation returns: wall time measured by the crate plus CRIU's
//! own statistics.

use std::time::Duration;

#[cfg(feature = "serde")]
pub(crate) use crate::stats::micros;
use crate::stats::{DumpStats, RestoreStats};

/// The result of a dump or pre-dump. In JSON, CRIU's statistics appear
/// flattened beside `pid` and `wall_time_us`, under CRIU's own field names.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DumpReport {
    /// The dumped tree's root pid.
    pub pid: i32,
    /// Wall time of the libcriu call, as this process saw it.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "wall_time_us", serialize_with = "micros")
    )]
    pub wall_time: Duration,
    /// Pre-dump passes before the final dump (for `dump_iters`; else 0).
    pub iterations: u32,
    /// CRIU's statistics (`stats-dump`), when it wrote usable ones. After
    /// a lazy dump CRIU 4.2.1 writes zeroed counters (it resets them when
    /// it starts serving pages); those are dropped, leaving `None`.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub stats: Option<DumpStats>,
}

/// The result of a restore.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RestoreReport {
    /// The restored tree's root pid.
    pub pid: i32,
    /// Wall time of the libcriu call, as this process saw it.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "wall_time_us", serialize_with = "micros")
    )]
    pub wall_time: Duration,
    /// CRIU's statistics (`stats-restore`), when it wrote them.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub stats: Option<RestoreStats>,
}
