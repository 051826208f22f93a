//! Live containers migrated between two network-namespace hosts by each
//! engine behind `criu_testkit::container::Engine`, with real CRIU. Needs
//! root.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use criu_testkit::container::docker::{mounts_below, processes_mentioning};
use criu_testkit::container::{
    consecutive, migrate_measured, wait_numbers, DockerEngine, Engine, OwnEngine, Row, RuncEngine,
    WAIT,
};
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
    // Each container has a network namespace of its own, none of host a's.
    assert_ne!(row.dest_netns, row.source_netns, "a new netns on b");
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
fn migrate_with<E: Engine>(make: impl FnOnce(&Path) -> E, interval: &str) -> Migrated<E> {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut engine = make(dir.path());
    let row = migrate_measured(&mut engine, &hosts, interval, Duration::ZERO).unwrap();
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
    let Migrated { engine, row, .. } = &migrate_with(|d| OwnEngine::new(d).unwrap(), INTERVAL);
    assert!(
        !criu_testkit::alive(row.pid_before),
        "the source container is gone"
    );
    let restored = engine.restored().expect("restored on b");
    assert_eq!(restored.child.pid(), row.pid_after);
}

#[test]
fn a_runc_container_migrates_and_counts_on_from_n_plus_one() {
    let Migrated { row, .. } = &migrate_with(|d| RuncEngine::new(d).unwrap(), INTERVAL);
    assert!(
        !criu_testkit::alive(row.pid_before),
        "runc checkpoint ended the source"
    );
    assert!(criu_testkit::alive(row.pid_after), "runc's restored init");
}

/// Docker's counter prints a little slower: each line is a log write by
/// the daemon too.
const DOCKER_INTERVAL: &str = "0.1";

/// What a Docker engine must leave behind once dropped: nothing.
struct DockerTraces {
    daemons: Vec<i32>,
    dir: std::path::PathBuf,
    netns: Vec<String>,
}

impl DockerTraces {
    fn of(engine: &DockerEngine, dir: &Path, hosts: &TwoHosts) -> DockerTraces {
        let logs = engine.logs().unwrap();
        DockerTraces {
            daemons: vec![logs.a.pid(), logs.b.pid()],
            dir: dir.to_path_buf(),
            netns: vec![hosts.a.name.clone(), hosts.b.name.clone()],
        }
    }

    fn assert_gone(&self) {
        for pid in &self.daemons {
            assert!(!criu_testkit::alive(*pid), "dockerd {pid} stopped");
        }
        let dir = self.dir.to_string_lossy();
        assert_eq!(processes_mentioning(&dir), Vec::<i32>::new(), "no shim");
        assert_eq!(mounts_below(&self.dir), Vec::<std::path::PathBuf>::new());
        let left: Vec<_> = std::fs::read_dir(&self.dir)
            .map_or(Vec::new(), |d| d.flatten().map(|e| e.file_name()).collect());
        assert!(left.is_empty(), "nothing left in {dir}: {left:?}");
        let listing = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        for n in &self.netns {
            assert!(!listing.contains(n.as_str()), "netns {n} deleted");
        }
    }
}

#[test]
fn a_docker_container_migrates_between_two_docker_hosts_and_leaves_nothing_behind() {
    let m = migrate_with(|d| DockerEngine::new(d).unwrap(), DOCKER_INTERVAL);
    let traces = DockerTraces::of(&m.engine, m._dir.path(), &m._hosts);
    let logs = m.engine.logs().unwrap();
    let ids = logs.ids().unwrap();
    let clone = ids.clone.as_deref().expect("a clone on b");
    let on_b = logs.b.api().state(clone).unwrap();
    assert!(on_b.running && on_b.pid == m.row.pid_after, "b runs it");
    assert!(
        logs.a.api().state(&ids.source).is_err(),
        "the source is removed once b runs the clone"
    );
    assert!(
        m.row.cost.criu.frozen_time_us.is_some(),
        "CRIU's stats-dump"
    );
    drop(m);
    traces.assert_gone();
}

/// Removes the process tree image, so that CRIU cannot restore.
fn lose_pstree(images: &Path) {
    std::fs::remove_file(images.join("pstree.img")).unwrap();
}

/// A Docker counter between fresh hosts; fields drop in order (the
/// engine and its daemons first).
struct DockerRun {
    engine: DockerEngine,
    hosts: TwoHosts,
    dir: TempDir,
}

impl DockerRun {
    fn new(fault: impl FnOnce(&mut DockerEngine)) -> DockerRun {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let mut engine = DockerEngine::new(dir.path()).unwrap();
        fault(&mut engine);
        DockerRun { engine, hosts, dir }
    }

    /// Starts the counter; returns its init's pid.
    fn start(&mut self) -> i32 {
        let pid = self.engine.start(&self.hosts, DOCKER_INTERVAL).unwrap();
        wait_numbers(&self.engine, 2, WAIT).unwrap();
        pid
    }

    /// The source runs on and counts without losing or repeating a
    /// number, no clone is left on b; once dropped, nothing is left.
    fn assert_source_counts_on_then_nothing_left(self) {
        let engine = &self.engine;
        assert_source_counts_on(engine);
        let traces = DockerTraces::of(engine, self.dir.path(), &self.hosts);
        drop(self);
        traces.assert_gone();
    }
}

/// The source runs on and counts without losing or repeating a number;
/// no clone is left on b.
fn assert_source_counts_on(engine: &DockerEngine) {
    assert!(engine.source_state().unwrap().running, "the source runs");
    let n = engine.numbers().unwrap().len();
    wait_numbers(engine, n + 3, WAIT).unwrap();
    let nums = engine.numbers().unwrap();
    assert!(consecutive(&nums), "no number lost or repeated: {nums:?}");
    let ids = engine.logs().unwrap().ids().unwrap();
    assert_eq!(ids.clone, None, "the clone on b is removed");
}

/// Lets `fault` break one phase of the migration, checks that it fails
/// with `expected` in its error, and that the source counts on.
fn docker_fault_keeps_the_source(fault: impl FnOnce(&mut DockerEngine), expected: &str) {
    let mut run = DockerRun::new(fault);
    let e = migrate_measured(&mut run.engine, &run.hosts, DOCKER_INTERVAL, Duration::ZERO)
        .expect_err("the migration fails");
    assert!(e.to_string().contains(expected), "{e}");
    run.assert_source_counts_on_then_nothing_left();
}

#[test]
fn a_failed_docker_restore_leaves_the_source_counting_on_host_a() {
    docker_fault_keeps_the_source(|e| e.damage_on_arrival(lose_pstree), "--checkpoint");
}

fn cut_after_64k(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 65536];
    if from.read_exact(&mut buf).is_ok() {
        let _ = to.write_all(&buf);
    }
    // Both ends are dropped here: the stream is cut mid-transfer.
}

#[test]
fn a_cut_docker_checkpoint_transfer_leaves_the_source_counting_on_host_a() {
    docker_fault_keeps_the_source(|e| e.relay_through(cut_after_64k), "transfer");
}

#[test]
fn a_failed_docker_checkpoint_quotes_criu_and_the_source_counts_on() {
    let mut run = DockerRun::new(|_| {});
    // A task that another tracer holds cannot be dumped by CRIU.
    let traced = nix::unistd::Pid::from_raw(run.start());
    nix::sys::ptrace::seize(traced, nix::sys::ptrace::Options::empty()).unwrap();
    let e = run
        .engine
        .migrate(&run.hosts)
        .expect_err("CRIU cannot dump it");
    nix::sys::ptrace::detach(traced, None).unwrap();
    let e = e.to_string();
    assert!(
        e.contains("CRIU's dump log") && e.contains("Error ("),
        "{e}"
    );
    run.assert_source_counts_on_then_nothing_left();
}

#[test]
fn a_stopped_docker_source_is_refused_with_a_clear_error() {
    let mut run = DockerRun::new(|_| {});
    let pid = nix::unistd::Pid::from_raw(run.start());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while run.engine.source_state().unwrap().running {
        assert!(std::time::Instant::now() < deadline, "the container stops");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = run
        .engine
        .migrate(&run.hosts)
        .expect_err("nothing to checkpoint");
    assert!(e.to_string().contains("is not running"), "{e}");
}

#[test]
fn a_docker_container_through_a_registry_counts_on_with_true_annotations_and_leaves_nothing_behind()
{
    use criu_oci::annotations::*;
    use criu_testkit::registry::DockerRegistryEngine;
    let m = migrate_with(|d| DockerRegistryEngine::new(d).unwrap(), DOCKER_INTERVAL);
    let cost = m.row.registry.as_ref().expect("push and pull measured");
    assert!(cost.image_bytes > 0 && cost.push_ms > 0.0 && cost.pull_ms > 0.0);
    assert_eq!(m.row.cost.transfer_bytes, cost.image_bytes);
    let docker = m.engine.docker();
    let logs = docker.logs().unwrap();
    let ids = logs.ids().unwrap();
    let on_b = logs.b.api().state(ids.clone.as_deref().unwrap()).unwrap();
    assert!(
        on_b.running && on_b.pid == m.row.pid_after,
        "b runs the clone"
    );
    assert!(
        logs.a.api().state(&ids.source).is_err(),
        "the source is removed"
    );

    // The image in the registry says truly what it holds.
    let reference = m.engine.reference().unwrap();
    let criu = criu::Criu::new();
    let here = HostFacts::current(&criu).unwrap();
    let client = criu_oci::Registry::new(&criu_oci::RegistryConfig {
        plain_http: true,
        ..Default::default()
    })
    .unwrap();
    let (image, _) = m
        ._hosts
        .b
        .run(|| client.pull(reference, &here))
        .unwrap()
        .unwrap();
    let a = &image.annotations;
    assert_eq!(a[ENGINE_NAME], "docker");
    assert_eq!(a[ENGINE_VERSION], logs.a.api().version().unwrap());
    assert_eq!(a[CONTAINER_NAME], docker.container_name());
    assert_eq!(a[ROOTFS_IMAGE_NAME], ids.image);
    assert_eq!(
        a[CRIU_VERSION],
        criu.version().unwrap().encoded().to_string()
    );
    assert_eq!(a[HOST_ARCH], go_arch(std::env::consts::ARCH));
    assert_eq!(a[CGROUP_VERSION], here.cgroup_version);
    assert_eq!(a[HOST_KERNEL], here.kernel);
    // And its archive: Docker's container, CRIU's statistics and images.
    let un = image
        .unpack(&m._dir.path().join("inspect"), &criu_oci::Limits::default())
        .unwrap();
    let config = un.config_dump().unwrap();
    assert_eq!(config["id"], ids.source.as_str());
    assert_eq!(config["rootfsImageName"], ids.image.as_str());
    assert!(un.root.join("stats-dump").is_file(), "stats-dump kept");
    assert!(un.images().unwrap().path().join("pstree.img").is_file());
    std::fs::remove_dir_all(&un.root).unwrap();

    let registry = m.engine.registry().unwrap();
    let registry_pid = registry.pid().unwrap();
    let mut traces = DockerTraces::of(docker, m._dir.path(), &m._hosts);
    traces.netns.push(registry.host.name.clone());
    drop(m);
    traces.assert_gone();
    assert!(!criu_testkit::alive(registry_pid), "the registry stopped");
}

#[test]
fn a_docker_checkpoint_altered_in_the_registry_is_refused_and_the_source_counts_on() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut engine = criu_testkit::registry::DockerRegistryEngine::new(dir.path()).unwrap();
    engine.tamper_with_pushed_layer();
    let e = migrate_measured(&mut engine, &hosts, DOCKER_INTERVAL, Duration::ZERO)
        .expect_err("the pull refuses the altered layer");
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    // Started again from its checkpoint on host a, it counts on.
    assert_source_counts_on(engine.docker());
    let traces = DockerTraces::of(engine.docker(), dir.path(), &hosts);
    drop(engine);
    drop(hosts);
    traces.assert_gone();
}
