//! Pre-copy through the crate and CRIU: pre-dumps, incremental dumps and
//! iterative dumps of a process whose memory keeps changing, restored and
//! checked word for word by the process itself.
//!
//! These run wherever CRIU can track memory: with soft-dirty bits, or on
//! kernels without them (these machines) with the CRIU the set-up builds
//! with `patches/criu-uffd-wp-track.patch` (docs/precopy-uffd.md). Where
//! CRIU cannot track memory each test is skipped (`criu_testkit::skip`),
//! which fails unless the Makefile allow-lists it.

use std::fs;
use std::process::Command;
use std::time::Duration;

use criu::{Criu, DumpReport, ImagesDir, Iteration, MemTrackMethod, Options};
use criu_testkit::skip::skip;
use criu_testkit::{built_bin, find_bin, Workload};

const TICK: Duration = Duration::from_millis(1);
const WAIT: Duration = Duration::from_secs(30);
/// Memory of the workload; pages of 4 KiB.
const MIB: usize = 32;
const PAGES: u64 = (MIB as u64) << 8;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::Builder::new()
                .prefix("criu-rs-precopy-")
                .tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .unwrap(),
        }
    }

    fn images(&self, name: &str) -> ImagesDir {
        ImagesDir::create(self.dir.path().join(name)).unwrap()
    }

    /// The pre-copy workload, rewriting `per_tick` pages every tick, with
    /// `extra` arguments.
    fn workload(&self, per_tick: u32, extra: &[&str]) -> Workload {
        let bin = built_bin(find_bin(
            "criu-rs-precopy-workload",
            "CRIU_RS_PRECOPY_WORKLOAD_BIN",
        ))
        .unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Workload::spawn_in(&bin, &self.dir.path().join("out.log"), TICK, MIB, |cmd| {
            cmd.arg("--pages-per-tick")
                .arg(per_tick.to_string())
                .args(&extra);
            Ok(())
        })
        .unwrap()
    }
}

/// How CRIU tracks memory here, or `None` (said loudly) when it cannot.
fn tracking_or_skip(test: &str) -> Option<MemTrackMethod> {
    let f = Criu::new().feature_check().unwrap();
    if let Some(m) = f.mem_track_method {
        return Some(m);
    }
    skip(
        &format!("precopy::{test}"),
        "CRIU cannot track memory changes here (no soft-dirty bits, and a CRIU without \
         patches/criu-uffd-wp-track.patch: run `make setup`)",
    );
    None
}

/// The userfaultfds process `pid` has open.
fn userfaultfds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
                .count()
        })
        .unwrap_or(0)
}

fn written(r: &DumpReport) -> u64 {
    r.stats.as_ref().expect("dump statistics").pages_written
}

/// Waits until the workload rewrote pages for `ticks` more ticks.
fn let_it_write(w: &Workload, ticks: u64) {
    w.wait_for_seq(w.last_seq() + ticks, WAIT).unwrap();
}

#[test]
fn feature_check_names_the_tracking_criu_uses() {
    let f = Criu::new().feature_check().unwrap();
    let cli = |name: &str| {
        Command::new("criu")
            .args(["check", "--feature", name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert_eq!(f.mem_track, f.mem_track_method.is_some(), "{f:?}");
    assert_eq!(
        f.mem_track_method == Some(MemTrackMethod::UffdWriteProtect),
        cli("mem_dirty_track_uffd"),
        "{f:?}"
    );
}

#[test]
fn pre_dumps_then_dump_restore_every_word() {
    let Some(method) = tracking_or_skip("pre_dumps_then_dump_restore_every_word") else {
        return;
    };
    let s = Setup::new();
    let mut w = s.workload(2, &[]);
    let criu = Criu::new();
    let (d1, d2, d3) = (s.images("pre-1"), s.images("pre-2"), s.images("final"));

    let first = criu
        .pre_dump(Options::new().pid(w.pid()).images_dir(&d1))
        .unwrap();
    if method == MemTrackMethod::UffdWriteProtect {
        assert_eq!(userfaultfds(w.pid()), 1, "the tracking stays in the task");
    }
    let_it_write(&w, 50);
    let second = criu
        .pre_dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&d2)
                .parent_images(d2.parent_link(&d1).unwrap()),
        )
        .unwrap();
    // Pages written between the last pre-dump and the final dump.
    let_it_write(&w, 50);
    let last = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&d3)
                .parent_images(d3.parent_link(&d2).unwrap())
                .track_mem(true),
        )
        .unwrap();
    w.reap(WAIT).unwrap();

    let (full, again, fin) = (written(&first), written(&second), written(&last));
    eprintln!("pages written: first pre-dump {full}, second {again}, final dump {fin} (of {PAGES} in the workload's buffer)");
    assert!(full >= PAGES, "the first pass takes everything: {full}");
    assert!(again > 0 && fin > 0, "the workload wrote between passes");
    assert!(
        again * 4 < full,
        "the second pre-dump skipped unchanged pages: {again} of {full}"
    );
    assert!(
        fin * 4 < full,
        "the final dump skipped unchanged pages: {fin} of {full}"
    );
    let skipped = last.stats.as_ref().map_or(0, |s| s.pages_skipped_parent);
    assert!(skipped > PAGES / 2, "taken from the parents: {skipped}");

    let (child, _) = criu.restore_child(Options::new().images_dir(&d3)).unwrap();
    w.forget();
    assert_eq!(
        userfaultfds(child.pid()),
        0,
        "no tracking in the restored task"
    );
    let (writes, ok) = w.verify_memory(child.pid(), WAIT).unwrap();
    assert!(
        ok,
        "every word is the last one written ({writes} page writes)"
    );
}

#[test]
fn dump_iters_restores_every_word() {
    let Some(method) = tracking_or_skip("dump_iters_restores_every_word") else {
        return;
    };
    let s = Setup::new();
    let mut w = s.workload(4, &[]);
    let criu = Criu::new();
    let fin = s.images("iters");
    let pid = w.pid();
    let mut descriptors = Vec::new();
    let rep = criu
        .dump_iters(Options::new().pid(pid).images_dir(&fin), |n| {
            descriptors.push(userfaultfds(pid));
            // Let the workload write between the passes.
            std::thread::sleep(Duration::from_millis(100));
            if n < 3 {
                Iteration::Again
            } else {
                Iteration::Final
            }
        })
        .unwrap();
    assert_eq!(rep.iterations, 3);
    if method == MemTrackMethod::UffdWriteProtect {
        assert_eq!(
            descriptors,
            [1, 1, 1],
            "one tracking descriptor across the passes"
        );
    }
    w.reap(WAIT).unwrap();
    let (child, _) = criu.restore_child(Options::new().images_dir(&fin)).unwrap();
    w.forget();
    assert_eq!(
        userfaultfds(child.pid()),
        0,
        "no tracking in the restored task"
    );
    let (writes, ok) = w.verify_memory(child.pid(), WAIT).unwrap();
    assert!(
        ok,
        "every word is the last one written ({writes} page writes)"
    );
}

#[test]
fn a_task_with_its_own_userfaultfd_is_refused() {
    let Some(method) = tracking_or_skip("a_task_with_its_own_userfaultfd_is_refused") else {
        return;
    };
    if method != MemTrackMethod::UffdWriteProtect {
        skip(
            "precopy::a_task_with_its_own_userfaultfd_is_refused",
            "soft-dirty tracks such tasks",
        );
        return;
    }
    let s = Setup::new();
    let mut w = s.workload(1, &["--own-userfaultfd", "1"]);
    assert_eq!(userfaultfds(w.pid()), 1);
    let pre = s.images("pre");
    let e = Criu::new()
        .pre_dump(Options::new().pid(w.pid()).images_dir(&pre))
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("uses userfaultfd"), "{msg}");
    assert!(w.is_running() && w.advances(WAIT), "the task goes on");
    assert_eq!(userfaultfds(w.pid()), 1, "its own userfaultfd, untouched");
}

#[test]
fn the_tracking_ends_with_a_dump_that_does_not_ask_for_it() {
    let Some(method) = tracking_or_skip("the_tracking_ends_with_a_dump_that_does_not_ask_for_it")
    else {
        return;
    };
    if method != MemTrackMethod::UffdWriteProtect {
        skip(
            "precopy::the_tracking_ends_with_a_dump_that_does_not_ask_for_it",
            "soft-dirty keeps no descriptor",
        );
        return;
    }
    let s = Setup::new();
    let mut w = s.workload(1, &[]);
    let criu = Criu::new();
    let (pre, snap, plain) = (s.images("pre"), s.images("snap"), s.images("plain"));
    criu.pre_dump(Options::new().pid(w.pid()).images_dir(&pre))
        .unwrap();
    assert_eq!(userfaultfds(w.pid()), 1);
    // A snapshot that leaves the task running with track_mem keeps it,
    // for the next incremental dump (as soft-dirty bits would stay).
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&snap)
            .parent_images(snap.parent_link(&pre).unwrap())
            .track_mem(true)
            .leave_running(true),
    )
    .unwrap();
    assert_eq!(userfaultfds(w.pid()), 1, "kept for the next increment");
    // A dump without track_mem ends it.
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&plain)
            .leave_running(true),
    )
    .unwrap();
    assert_eq!(userfaultfds(w.pid()), 0, "no tracking left in the task");
    assert!(w.is_running() && w.advances(WAIT), "the task goes on");
}
