//! CRIU's own statistics (`stats-dump`, `stats-restore` in the work
//! directory), decoded by `criu-image` (its framing and its generated
//! `stats_entry`), the one decoder of CRIU images in the workspace.
//!
//! Field names follow CRIU's, so JSON made from them matches what
//! `podman container checkpoint --print-stats` shows. Times are
//! [`Duration`]s in Rust and whole microseconds in JSON, as in CRIU.

use std::time::Duration;

#[cfg(feature = "serde")]
use serde::Serializer;

use criu_image::proto::StatsEntry;

use crate::error::Result;
use crate::framing;

/// A duration in JSON: whole microseconds, as CRIU's own `*_time` fields.
#[cfg(feature = "serde")]
pub(crate) fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(feature = "serde")]
pub(crate) fn opt_micros<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => micros(d, s),
        None => s.serialize_none(),
    }
}

fn us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
}

/// Statistics of a dump or pre-dump (`stats-dump`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DumpStats {
    /// Time to freeze the tasks.
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub freezing_time: Duration,
    /// Time the tasks stayed frozen (with leave-running or a failed dump,
    /// until they resumed).
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub frozen_time: Duration,
    /// Time to collect memory pages.
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub memdump_time: Duration,
    /// Time to write memory pages out.
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub memwrite_time: Duration,
    /// Pages examined.
    pub pages_scanned: u64,
    /// Pages skipped because the parent images have them.
    pub pages_skipped_parent: u64,
    /// Pages written.
    pub pages_written: u64,
    /// Time to resolve inotify watch paths, when measured.
    #[cfg_attr(feature = "serde", serde(serialize_with = "opt_micros"))]
    pub irmap_resolve: Option<Duration>,
    /// Pages left for lazy (post-copy) transfer.
    pub pages_lazy: u64,
    /// Page pipes used.
    pub page_pipes: Option<u64>,
    /// Page pipe buffers used.
    pub page_pipe_bufs: Option<u64>,
    /// Shared-memory pages examined.
    pub shpages_scanned: Option<u64>,
    /// Shared-memory pages found in the parent images.
    pub shpages_skipped_parent: Option<u64>,
    /// Shared-memory pages written.
    pub shpages_written: Option<u64>,
}

impl DumpStats {
    /// How long the tasks were stopped: freezing plus frozen time.
    pub fn stopped_time(&self) -> Duration {
        self.freezing_time.saturating_add(self.frozen_time)
    }

    /// The bytes of memory written: `pages_written` pages of this
    /// machine's page size (saturating, for a damaged statistics file).
    pub fn bytes_written(&self) -> u64 {
        self.pages_written.saturating_mul(page_size())
    }
}

/// This machine's page size, the unit of CRIU's page counts.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Statistics of a restore (`stats-restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RestoreStats {
    /// Pages compared with the parent.
    pub pages_compared: u64,
    /// Pages skipped because copy-on-write shares them.
    pub pages_skipped_cow: u64,
    /// Time to fork the task tree.
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub forking_time: Duration,
    /// Time of the whole restore inside CRIU.
    #[cfg_attr(feature = "serde", serde(serialize_with = "micros"))]
    pub restore_time: Duration,
    /// Pages restored, when reported.
    pub pages_restored: Option<u64>,
}

/// A decoded statistics file: dump or restore part, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// The dump part.
    pub dump: Option<DumpStats>,
    /// The restore part.
    pub restore: Option<RestoreStats>,
}

impl Stats {
    /// Decodes the bytes of a `stats-dump` or `stats-restore` file. Never
    /// panics; malformed input gives [`crate::Error::BadImage`].
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Stats> {
        let entry: StatsEntry = framing::entries(file, bytes, "STATS")?.first()?;
        Ok(Stats {
            dump: entry.dump.map(|d| DumpStats {
                freezing_time: us(d.freezing_time),
                frozen_time: us(d.frozen_time),
                memdump_time: us(d.memdump_time),
                memwrite_time: us(d.memwrite_time),
                pages_scanned: d.pages_scanned,
                pages_skipped_parent: d.pages_skipped_parent,
                pages_written: d.pages_written,
                irmap_resolve: d.irmap_resolve.map(us),
                pages_lazy: d.pages_lazy,
                page_pipes: d.page_pipes,
                page_pipe_bufs: d.page_pipe_bufs,
                shpages_scanned: d.shpages_scanned,
                shpages_skipped_parent: d.shpages_skipped_parent,
                shpages_written: d.shpages_written,
            }),
            restore: entry.restore.map(|r| RestoreStats {
                pages_compared: r.pages_compared,
                pages_skipped_cow: r.pages_skipped_cow,
                forking_time: us(r.forking_time),
                restore_time: us(r.restore_time),
                pages_restored: r.pages_restored,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_image::magic;
    use criu_image::proto::{DumpStatsEntry, StatsEntry};
    use prost::Message;

    fn image(entry: &StatsEntry) -> Vec<u8> {
        let body = entry.encode_to_vec();
        let mut v = Vec::new();
        v.extend_from_slice(&magic::IMG_SERVICE.to_le_bytes());
        v.extend_from_slice(&magic::value_of("STATS").unwrap().to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn round_trip_and_json_names() {
        let entry = StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1500,
                frozen_time: 20_000,
                pages_written: 7,
                ..Default::default()
            }),
            restore: None,
        };
        let stats = Stats::decode("stats-dump", &image(&entry)).unwrap();
        let d = stats.dump.unwrap();
        assert_eq!(d.freezing_time, Duration::from_micros(1500));
        assert_eq!(d.stopped_time(), Duration::from_micros(21_500));
        #[cfg(feature = "serde")]
        {
            let json = serde_json::to_value(d).unwrap();
            assert_eq!(json["freezing_time"], 1500);
            assert_eq!(json["frozen_time"], 20_000);
            assert_eq!(json["pages_written"], 7);
        }
        assert_eq!(d.bytes_written(), 7 * page_size());
        let huge = DumpStats {
            pages_written: u64::MAX,
            ..d
        };
        assert_eq!(huge.bytes_written(), u64::MAX);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(Stats::decode("x", &[]).is_err());
        assert!(Stats::decode("x", &[0; 12]).is_err());
        let mut v = image(&StatsEntry::default());
        v[8] = 200; // claims more bytes than there are
        assert!(Stats::decode("x", &v).is_err());
        let mut v = image(&StatsEntry {
            dump: Some(Default::default()),
            restore: None,
        });
        v.truncate(v.len() - 1);
        assert!(Stats::decode("x", &v).is_err());
    }
}
