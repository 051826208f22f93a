//! CRIU's own statistics (`stats-dump`, `stats-restore` in the work
//! directory), decoded from `images/stats.proto` with prost.
//!
//! Field names follow CRIU's, so JSON made from them matches what
//! `podman container checkpoint --print-stats` shows. Times are
//! [`Duration`]s in Rust and whole microseconds in JSON, as in CRIU.

use std::time::Duration;

#[cfg(feature = "serde")]
use serde::Serializer;

use crate::error::Result;
use crate::framing::Entries;

/// Magic of CRIU's service files (the first word of `stats-*`).
pub const IMG_SERVICE_MAGIC: u32 = crate::framing::IMG_SERVICE_MAGIC;
/// Magic of the statistics image (the second word).
pub const STATS_MAGIC: u32 = 0x5709_3306;
/// The largest statistics message accepted (real ones are under 100 bytes).
const MAX_ENTRY: usize = 64 * 1024;

/// Wire types, field for field from `images/stats.proto`.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DumpStatsEntry {
        #[prost(uint32, required, tag = "1")]
        pub freezing_time: u32,
        #[prost(uint32, required, tag = "2")]
        pub frozen_time: u32,
        #[prost(uint32, required, tag = "3")]
        pub memdump_time: u32,
        #[prost(uint32, required, tag = "4")]
        pub memwrite_time: u32,
        #[prost(uint64, required, tag = "5")]
        pub pages_scanned: u64,
        #[prost(uint64, required, tag = "6")]
        pub pages_skipped_parent: u64,
        #[prost(uint64, required, tag = "7")]
        pub pages_written: u64,
        #[prost(uint32, optional, tag = "8")]
        pub irmap_resolve: Option<u32>,
        #[prost(uint64, required, tag = "9")]
        pub pages_lazy: u64,
        #[prost(uint64, optional, tag = "10")]
        pub page_pipes: Option<u64>,
        #[prost(uint64, optional, tag = "11")]
        pub page_pipe_bufs: Option<u64>,
        #[prost(uint64, optional, tag = "12")]
        pub shpages_scanned: Option<u64>,
        #[prost(uint64, optional, tag = "13")]
        pub shpages_skipped_parent: Option<u64>,
        #[prost(uint64, optional, tag = "14")]
        pub shpages_written: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RestoreStatsEntry {
        #[prost(uint64, required, tag = "1")]
        pub pages_compared: u64,
        #[prost(uint64, required, tag = "2")]
        pub pages_skipped_cow: u64,
        #[prost(uint32, required, tag = "3")]
        pub forking_time: u32,
        #[prost(uint32, required, tag = "4")]
        pub restore_time: u32,
        #[prost(uint64, optional, tag = "5")]
        pub pages_restored: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatsEntry {
        #[prost(message, optional, tag = "1")]
        pub dump: Option<DumpStatsEntry>,
        #[prost(message, optional, tag = "2")]
        pub restore: Option<RestoreStatsEntry>,
    }
}

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
        let magics = [IMG_SERVICE_MAGIC, STATS_MAGIC];
        let entry: proto::StatsEntry =
            Entries::open(file, bytes, &magics, "a statistics image", MAX_ENTRY)?.first()?;
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
    use prost::Message;

    fn image(entry: &proto::StatsEntry) -> Vec<u8> {
        let body = entry.encode_to_vec();
        let mut v = Vec::new();
        v.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
        v.extend_from_slice(&STATS_MAGIC.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn round_trip_and_json_names() {
        let entry = proto::StatsEntry {
            dump: Some(proto::DumpStatsEntry {
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
        let mut v = image(&proto::StatsEntry::default());
        v[8] = 200; // claims more bytes than there are
        assert!(Stats::decode("x", &v).is_err());
        let mut v = image(&proto::StatsEntry {
            dump: Some(Default::default()),
            restore: None,
        });
        v.truncate(v.len() - 1);
        assert!(Stats::decode("x", &v).is_err());
    }
}
