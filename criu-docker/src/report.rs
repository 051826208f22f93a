//! What a move cost, on each side, with the process route's field names
//! where they mean the same (`*_us`: microseconds).

use std::time::Duration;

use criu::transfer::TransferStats;
use criu::DumpStats;
use serde::{Serialize, Serializer};

fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

fn opt_micros<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

/// What the source saw of a move.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SendReport {
    /// The container's name on the source host.
    pub container: String,
    /// Its ID on the source host.
    pub source_id: String,
    /// Its name on the destination host.
    pub dest_name: String,
    /// Its ID on the destination host.
    pub dest_id: String,
    /// Its image, as the user named it.
    pub image: String,
    /// Both pre-flights, the destination's container created (before
    /// anything stopped).
    #[serde(rename = "preflight_us", serialize_with = "micros")]
    pub preflight: Duration,
    /// The push of the container's image to the registry (in the
    /// pre-flight), when the destination lacked it.
    #[serde(rename = "image_push_us", serialize_with = "opt_micros")]
    pub image_push: Option<Duration>,
    /// `docker checkpoint create`: the container stops at its start.
    #[serde(rename = "checkpoint_us", serialize_with = "micros")]
    pub checkpoint: Duration,
    /// CRIU's own timings of that checkpoint, when they could be read.
    pub criu_dump: Option<DumpStats>,
    /// How long CRIU ran within the checkpoint (from its log's time
    /// stamps; the rest is runc, containerd and Docker), when known.
    #[serde(rename = "criu_dump_run_us", serialize_with = "opt_micros")]
    pub criu_dump_run: Option<Duration>,
    /// The checkpoint's files on the stream.
    pub transfer: TransferStats,
    /// The destination's `docker start --checkpoint`, as it timed it.
    #[serde(rename = "restore_us", serialize_with = "micros")]
    pub restore: Duration,
    /// CRIU's `restore_time` on the destination, when it left it.
    pub restore_time_us: Option<u64>,
    /// From the checkpoint's start to the destination's "restored": the
    /// time the container served nobody.
    #[serde(rename = "downtime_us", serialize_with = "micros")]
    pub downtime: Duration,
    /// What the downtime spent beyond checkpoint, transfer and restore:
    /// messages between the hosts, listing and placing the checkpoint.
    /// At least 0: the source's transfer time ends when its thread reads
    /// the clock after the last write, by which time the destination may
    /// already be restoring, so the three can add up to a little more
    /// than the downtime.
    #[serde(rename = "handoff_us", serialize_with = "micros")]
    pub handoff: Duration,
    /// The whole move, until the source container was removed.
    #[serde(rename = "total_us", serialize_with = "micros")]
    pub total: Duration,
    /// Whether the source container was removed (otherwise it is kept
    /// stopped, with its checkpoint).
    pub source_removed: bool,
}

/// What the destination saw of a move.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ReceiveReport {
    /// The container's name here.
    pub name: String,
    /// Its ID here.
    pub id: String,
    /// The image reference it was created from here.
    pub image: String,
    /// Its name and ID on the source host.
    pub source_name: String,
    /// Its ID on the source host.
    pub source_id: String,
    /// The pull of the container's image from the registry, in the
    /// pre-flight, when this host lacked it.
    #[serde(rename = "image_pull_us", serialize_with = "opt_micros")]
    pub image_pull: Option<Duration>,
    /// The checkpoint's files received.
    pub transfer: TransferStats,
    /// `docker start --checkpoint` until the daemon reported it running.
    #[serde(rename = "restore_us", serialize_with = "micros")]
    pub restore: Duration,
    /// CRIU's `restore_time`, when it left it.
    pub restore_time_us: Option<u64>,
    /// Whether the source confirmed (`Done`) that it stops its copy. When
    /// false the source went silent after the restore: this copy was kept
    /// rather than risk losing the container, and the source's may run
    /// too. Check it.
    pub source_confirmed: bool,
}
