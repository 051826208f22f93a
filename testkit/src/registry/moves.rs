//! Moving a process tree (or a container) from host a to host b through a
//! [`RegistryHost`], and the cost of it beside the direct strategies.

use std::fs;
use std::path::Path;
use std::time::Duration;

use criu_oci::migrate::{checkpoint_and_push, pull_and_restore, PushTo, Pushed, Restored};
use criu_oci::{Compression, Limits};

use super::host::RegistryHost;
use crate::container::{BoxError, RegistryCost};
use crate::hosts::TwoHosts;
use crate::measure::{ms, Cost, DumpTimes, Row, Started};

/// What [`move_through_registry`] moves, and how.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// The root of the tree, on host a.
    pub pid: i32,
    /// Its name (the image's container name and repository).
    pub name: &'a str,
    /// Host a's work directory (the dump).
    pub src_dir: &'a Path,
    /// Host b's work directory (the unpacked archive).
    pub dst_dir: &'a Path,
    /// The layer's compression.
    pub compression: Compression,
}

/// Moves `m.pid`'s tree from host a to host b through `registry` (plain
/// HTTP): a checkpoints and pushes, b pulls and restores. `src`/`dst` add
/// CRIU options to the dump and the restore. The source is left stopped:
/// the caller kills it with [`Pushed::finish`] once it has seen the
/// restored tree (dropping it continues the source). On failure the
/// source runs on.
pub fn move_through_registry(
    hosts: &TwoHosts,
    registry: &RegistryHost,
    m: &Move<'_>,
    src: impl Fn(&mut criu::Options<'_>) + Sync,
    dst: impl Fn(&mut criu::Options<'_>) + Sync,
) -> Result<(Pushed, Restored), BoxError> {
    let Move {
        pid,
        name,
        src_dir,
        dst_dir,
        compression,
    } = *m;
    let reference = registry.fresh_reference(name);
    let (client_a, client_b) = registry.clients(hosts, &reference)?;
    let criu = criu::Criu::new();
    let pushed = hosts.a.run(|| {
        let to = PushTo {
            registry: &client_a,
            reference: &reference,
            compression,
        };
        checkpoint_and_push(&criu, pid, name, src_dir, &to, &src)
    })??;
    let restored = hosts.b.run(|| {
        pull_and_restore(
            &criu,
            &client_b,
            &reference,
            dst_dir,
            &Limits::default(),
            &dst,
        )
    })??;
    Ok((pushed, restored))
}

/// Like [`crate::measure::migrate_workload_over`], through a registry (the
/// layer compressed with `compression`): starts
/// the workload in its own PID namespace on host a of fresh hosts, starts a
/// registry host, checkpoints and pushes on a, pulls and restores on b,
/// kills the (stopped) source only then, and checks the counter goes on.
pub fn migrate_via_registry(
    compression: Compression,
    workload: &str,
    mib: usize,
    warmup: Duration,
) -> Result<(Row, RegistryCost), BoxError> {
    let mut started = Started::new("criu-rs-regmig-", mib, warmup)?;
    let registry = RegistryHost::start(&started.hosts, None)?;
    let (src_dir, dst_dir) = (started.dir().join("a"), started.dir().join("b"));
    fs::create_dir_all(&src_dir)?;
    fs::create_dir_all(&dst_dir)?;
    let m = Move {
        pid: started.pid,
        name: workload,
        src_dir: &src_dir,
        dst_dir: &dst_dir,
        compression,
    };
    let (pushed, restored) = move_through_registry(&started.hosts, &registry, &m, |_| {}, |_| {})?;
    let cost = RegistryCost {
        pack_ms: ms(pushed.pack),
        push_ms: ms(pushed.push.elapsed),
        pull_ms: ms(restored.pull.elapsed),
        unpack_ms: ms(restored.unpack),
        image_bytes: pushed.image_bytes,
    };
    let (dump_wall, dump_stats) = (pushed.dump.wall_time, pushed.dump.stats);
    pushed.finish();
    let pid_after = restored.child.pid();
    let seen = started.observe(pid_after, mib)?;
    let row = Row {
        strategy: "registry".into(),
        // The registry is reached over plain HTTP.
        transport: "plain".into(),
        workload: workload.into(),
        cost: Cost {
            criu: DumpTimes::of(dump_stats.as_ref()),
            dump_ms: ms(dump_wall),
            transfer_bytes: cost.image_bytes,
            transfer_ms: cost.push_ms + cost.pull_ms,
            restore_ms: ms(restored.restore.wall_time),
            restore_time_us: restored
                .restore
                .stats
                .map(|s| s.restore_time.as_micros() as u64),
            ..Cost::default()
        },
        ..Row::default()
    }
    .observed(&started, &seen);
    drop(restored.child);
    Ok((row, cost))
}
