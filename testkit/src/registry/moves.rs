//! Moving a process tree (or a container) from host a to host b through a
//! [`RegistryHost`], and the cost of it beside the direct strategies.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::migrate::{receive_with, send_with, DestConfig, SourceConfig, Strategy};
use criu_oci::migrate::{checkpoint_and_push, pull_and_restore, PushTo, Pushed, Restored};
use criu_oci::{strategy, Compression, Limits};

use super::host::RegistryHost;
use crate::container::{BoxError, RegistryCost};
use crate::hosts::TwoHosts;
use crate::measure::{ms, Cost, DumpTimes, RegistryPhases, Row, RowPhases, Started};

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
    let (_images, src_dir, dst_dir) = images_in_memory()?;
    let m = Move {
        pid: started.pid,
        name: workload,
        src_dir: &src_dir,
        dst_dir: &dst_dir,
        compression,
    };
    let (pushed, restored) = move_through_registry(&started.hosts, &registry, &m, |_| {}, |_| {})?;
    let stopped_to_restored = pushed.stopped_since().elapsed();
    let cost = RegistryCost {
        pack_ms: ms(pushed.pack),
        push_ms: ms(pushed.push.elapsed),
        pull_ms: ms(restored.pull.elapsed),
        unpack_ms: ms(restored.unpack),
        image_bytes: pushed.image_bytes,
    };
    let (dump_wall, dump_stats) = (pushed.dump.wall_time, pushed.dump.stats);
    let migration = registry_phases(&pushed, &restored, stopped_to_restored);
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
    // The application's gap beyond the move's own phases.
    let resume = (seen.downtime_ns / 1000).saturating_sub(stopped_to_restored.as_micros());
    let row = Row {
        phases: Some(RowPhases {
            resume_us: u64::try_from(resume).unwrap_or(u64::MAX),
            ..migration
        }),
        ..row
    };
    drop(restored.child);
    Ok((row, cost))
}

/// [`migrate_via_registry`] as a live migration runs it: criu-oci's
/// registry strategy (`criu_oci::strategy`) over a TCP stream from host a
/// to host b, the layer plain, the destination fetching each pages part
/// as the source announces it while the rest is still pushed. The row's
/// phases are the driver's, with the push's and the pull's beside them
/// (`pull` and `pull parts` count from the source's last message, after
/// the push: what the pull added to it).
pub fn migrate_via_registry_strategy(
    workload: &str,
    mib: usize,
    warmup: Duration,
) -> Result<Row, BoxError> {
    let mut started = Started::new("criu-rs-regmig-", mib, warmup)?;
    let registry = RegistryHost::start(&started.hosts, None)?;
    let (_images, src_dir, dst_dir) = images_in_memory()?;
    let reference = registry.fresh_reference(workload);
    let (client_a, client_b) = registry.clients(&started.hosts, &reference)?;
    let mut push = strategy::PushTo::new(&client_a, &reference, workload);
    let prefix = format!("{}/criu-rs/", registry.address());
    let mut pull = strategy::PullFrom::new(&client_b, &prefix, Limits::default());
    let hosts = &started.hosts;
    let listener = hosts.b.run(|| TcpListener::bind((hosts.b.addr, 0)))??;
    let addr = listener.local_addr()?;
    let (src, dst) = std::thread::scope(|s| {
        let dst = s.spawn(|| {
            hosts.b.run(|| {
                let (mut stream, _) = listener.accept()?;
                let cfg = DestConfig::new().work_dir(&dst_dir);
                Ok::<_, BoxError>(receive_with(
                    &criu::Criu::new(),
                    &mut stream,
                    cfg,
                    &mut pull,
                )?)
            })
        });
        let src = hosts.a.run(|| {
            let mut stream = TcpStream::connect(addr)?;
            // The strategy is the registry's; the config's is not used.
            let cfg = SourceConfig::new(Strategy::StopAndCopy).work_dir(&src_dir);
            Ok::<_, BoxError>(send_with(
                &criu::Criu::new(),
                started.pid,
                &mut stream,
                cfg,
                &mut push,
            )?)
        });
        (src, dst.join())
    });
    let dst = dst.map_err(|_| "the destination's thread panicked")???;
    let src = src??;
    let pushed = push.pushed().ok_or("the source reported no push")?.clone();
    let pulled = pull
        .pulled()
        .ok_or("the destination reported no pull")?
        .clone();
    let pid_after = dst.child.pid();
    let seen = started.observe(pid_after, mib)?;
    drop(dst.child);
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let registry_phases = RegistryPhases {
        push_parts_us: us(pushed.parts_wait),
        push_rest_us: us(pushed.push.elapsed.saturating_sub(pushed.parts_wait)),
        pull_us: us(pulled.pull.elapsed.saturating_sub(pulled.parts)),
        pull_parts_us: us(pulled.parts),
        unpack_us: us(pulled.unpack),
    };
    // The application's gap beyond the migration's own phases.
    let resume = (seen.downtime_ns / 1000).saturating_sub(src.stopped_to_restored.as_micros());
    Ok(Row {
        phases: Some(RowPhases {
            migration: src.phases,
            resume_us: u64::try_from(resume).unwrap_or(u64::MAX),
            registry: Some(registry_phases),
        }),
        // The registry is reached over plain HTTP.
        ..Row::of(&src, "plain", workload).observed(&started, &seen)
    })
}

/// Where the registry route's downtime went: CRIU's own phases from its
/// statistics (split as `criu::migrate::Phases` splits them), the push's
/// and the pull's ([`RegistryPhases`]), the restore, and in `handoff`
/// what none of them explains of `stopped_to_restored`.
fn registry_phases(
    pushed: &Pushed,
    restored: &Restored,
    stopped_to_restored: Duration,
) -> RowPhases {
    let dump = pushed.dump.wall_time;
    let criu = pushed.dump.stats.as_ref();
    let mut p = criu::migrate::Phases::default();
    p.memory_write = criu.map(|s| s.memwrite_time.min(s.memdump_time));
    p.memory_dump = criu.map(|s| s.memdump_time.saturating_sub(s.memwrite_time));
    p.frozen = criu.map(|s| s.frozen_time.saturating_sub(s.memdump_time));
    p.freeze = criu.map(|s| s.freezing_time);
    let in_criu: Duration = [p.freeze, p.frozen, p.memory_dump, p.memory_write]
        .into_iter()
        .flatten()
        .sum();
    p.dump_other = dump.saturating_sub(in_criu);
    p.restore = restored.restore.wall_time;
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (push, pull) = (pushed.push.elapsed, restored.pull.elapsed);
    let registry = RegistryPhases {
        push_parts_us: us(pushed.parts_wait),
        push_rest_us: us(push.saturating_sub(pushed.parts_wait)),
        pull_us: us(pull.saturating_sub(restored.parts)),
        pull_parts_us: us(restored.parts),
        unpack_us: us(restored.unpack),
    };
    p.handoff = stopped_to_restored
        .saturating_sub(dump.max(in_criu))
        .saturating_sub(push + pull + restored.unpack + p.restore);
    RowPhases {
        migration: p,
        resume_us: 0,
        registry: Some(registry),
    }
}

/// A private directory in `/dev/shm` with the source's (`a`) and the
/// destination's (`b`) images directories: the dump and the unpacked
/// images in memory, as the direct strategies keep theirs (their private
/// tmpfs directories).
fn images_in_memory() -> Result<(tempfile::TempDir, PathBuf, PathBuf), BoxError> {
    let images = tempfile::Builder::new()
        .prefix("criu-rs-regmig-")
        .tempdir_in("/dev/shm")?;
    let (src_dir, dst_dir) = (images.path().join("a"), images.path().join("b"));
    fs::create_dir_all(&src_dir)?;
    fs::create_dir_all(&dst_dir)?;
    Ok((images, src_dir, dst_dir))
}
