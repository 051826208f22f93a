//! Live containers migrated between two network-namespace hosts by each
//! engine behind `criu_testkit::container::Engine`, with real CRIU. Needs
//! root.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use criu_testkit::container::{migrate_measured, Engine, OwnEngine, Row, RuncEngine};
use criu_testkit::hosts::TwoHosts;

/// Fast enough for CI, slow enough that a line is not missed.
const INTERVAL: &str = "0.05";

fn assert_counts_on(row: &Row, hosts: &TwoHosts) {
    assert!(row.continued, "0, 1, 2, ... throughout: {row:?}");
    assert_eq!(
        row.first_after,
        row.last_before + 1,
        "the count goes on from {} + 1",
        row.last_before
    );
    // Each container has a network namespace of its own, created anew on b.
    assert_ne!(row.dest_netns, row.source_netns);
    assert_ne!(row.dest_netns, hosts.a.netns_inode().unwrap());
    assert!(
        row.cost.transfer_bytes > 0,
        "the checkpoint crossed the wire"
    );
}

/// A finished migration; fields drop in order: the engine (and its
/// containers) before the hosts, the hosts before the directory.
struct Migrated<E> {
    engine: E,
    row: Row,
    _hosts: TwoHosts,
    _dir: TempDir,
}

/// Migrates with the engine `make` builds in a fresh directory, between
/// fresh hosts, and checks that the count went on; the engine is returned
/// (alive) for engine-specific checks.
fn migrate_with<E: Engine>(make: impl FnOnce(&Path) -> E) -> Migrated<E> {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut engine = make(dir.path());
    let row = migrate_measured(&mut engine, &hosts, INTERVAL, Duration::ZERO).unwrap();
    assert_counts_on(&row, &hosts);
    Migrated {
        engine,
        row,
        _hosts: hosts,
        _dir: dir,
    }
}

#[test]
fn a_container_migrates_and_counts_on_from_n_plus_one() {
    let Migrated { engine, row, .. } = &migrate_with(|d| OwnEngine::new(d).unwrap());
    assert!(
        !criu_testkit::alive(row.pid_before),
        "the source container is gone"
    );
    let restored = engine.restored().expect("restored on b");
    assert_eq!(restored.child.pid(), row.pid_after);
}

#[test]
fn a_runc_container_migrates_and_counts_on_from_n_plus_one() {
    let Migrated { row, .. } = &migrate_with(|d| RuncEngine::new(d).unwrap());
    assert!(
        !criu_testkit::alive(row.pid_before),
        "runc checkpoint ended the source"
    );
    assert!(criu_testkit::alive(row.pid_after), "runc's restored init");
}
