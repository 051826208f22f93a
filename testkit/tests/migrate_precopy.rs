//! The pre-copy strategy between two network-namespace hosts, with real
//! CRIU: a workload that keeps rewriting part of its memory is moved with
//! passes taken while it runs, and checks every word of its memory itself
//! on the destination; a destination that refuses the restore leaves the
//! source running, intact. Needs root, and CRIU that can track memory
//! (soft-dirty, or the set-up's userfaultfd patch): elsewhere each test
//! skips through `criu_testkit::skip` (a failure unless allow-listed).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criu::migrate::{DestConfig, PreCopyPolicy, SourceConfig, SourceState, Strategy};
use criu::Criu;
use criu_testkit::hosts::{Migration, TwoHosts};
use criu_testkit::{built_bin, find_bin, Workload};

const WAIT: Duration = Duration::from_secs(60);
/// Memory of the workload; pages of 4 KiB.
const MIB: usize = 64;
const PAGES: u64 = (MIB as u64) << 8;

/// Whether CRIU can track memory here; when not, the skip goes through
/// `criu_testkit::skip`, which fails the test unless the Makefile
/// allow-lists it for this machine.
fn tracking_or_skip(test: &str) -> bool {
    if Criu::new().feature_check().unwrap().mem_track {
        return true;
    }
    criu_testkit::skip::skip(
        &format!("migrate_precopy::{test}"),
        "CRIU cannot track memory changes here (no soft-dirty bits, and a CRIU \
         without patches/criu-uffd-wp-track.patch: run `make setup`)",
    );
    false
}

/// The pre-copy workload in its own PID namespace on host a, rewriting 2
/// pseudo-random pages every millisecond (8 MiB/s) of its `MIB` MiB.
fn workload(hosts: &TwoHosts, out: &Path) -> Workload {
    let bin = built_bin(find_bin(
        "criu-rs-precopy-workload",
        "CRIU_RS_PRECOPY_WORKLOAD_BIN",
    ))
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--", "setsid"])
        .arg(bin)
        .arg(out)
        .args(["--interval-us", "1000", "--pages-per-tick", "2"])
        .arg("--memory-mib")
        .arg(MIB.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hosts
        .a
        .run(|| Workload::start_wrapped(cmd, out, MIB))
        .unwrap()
        .unwrap()
}

fn migrate(
    hosts: &TwoHosts,
    pid: i32,
    dir: &Path,
    dest: impl FnOnce(DestConfig<'static>) -> DestConfig<'static> + Send,
) -> Migration {
    let (src_dir, dst_dir) = (dir.join("src"), dir.join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();
    let policy = PreCopyPolicy::default().max_passes(4);
    hosts
        .migrate(
            pid,
            || {
                SourceConfig::new(Strategy::PreCopy)
                    .work_dir(&src_dir)
                    .pre_copy(policy)
            },
            || dest(DestConfig::new().work_dir(&dst_dir)),
            None,
        )
        .unwrap()
}

/// Pre-copy with both sides' images in the crate's own directories in
/// memory (the default): the source frees each pass's and the final
/// dump's pages once sent.
fn migrate_in_memory(hosts: &TwoHosts, pid: i32) -> Migration {
    let policy = PreCopyPolicy::default().max_passes(4);
    hosts
        .migrate(
            pid,
            || SourceConfig::new(Strategy::PreCopy).pre_copy(policy),
            DestConfig::new,
            None,
        )
        .unwrap()
}

/// The pass directories (`pass-N`) in `dir`, in order.
fn passes(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pass-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| n[5..].parse::<u32>().unwrap_or(u32::MAX));
    names
}

/// The bytes of the memory pages images in `dir`: their sizes, and the
/// bytes they take (a freed image takes none of its size).
fn pages_bytes(dir: &Path) -> (u64, u64) {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap())
        .fold((0, 0), |(len, used), m| {
            (len + m.len(), used + m.blocks() * 512)
        })
}

#[test]
fn pre_copy_moves_a_writing_workload_word_for_word() {
    if !tracking_or_skip("pre_copy_moves_a_writing_workload_word_for_word") {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = workload(&hosts, &dir.path().join("out.log"));
    // Written before the first pass, and after each.
    w.wait_for_seq(w.last_seq() + 50, WAIT).unwrap();

    let run = migrate(&hosts, w.pid(), dir.path(), |c| c);
    let src = run.src.unwrap_or_else(|e| panic!("pre-copy: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("pre-copy: {e}"));
    w.reap(WAIT).unwrap();
    w.forget();

    let (sent, got) = (
        passes(&dir.path().join("src")),
        passes(&dir.path().join("dst")),
    );
    let sizes: Vec<u64> = sent
        .iter()
        .map(|p| pages_bytes(&dir.path().join("src").join(p)).0 >> 10)
        .collect();
    eprintln!("passes: source {sent:?} (pages KiB {sizes:?}), destination {got:?}");
    // The images stay whole in a directory the caller chose.
    for name in sent.iter().map(String::as_str).chain(["images"]) {
        let (len, used) = pages_bytes(&dir.path().join("src").join(name));
        assert!(
            used >= len && len > 0,
            "src/{name} keeps its pages: {used} of {len} bytes"
        );
    }
    assert!(
        !sent.is_empty() && sent.len() <= 4,
        "1 to 4 passes: {sent:?}"
    );
    assert_eq!(sent, got, "every pass arrived");
    // Each pass, and the final images, link the pass before as CRIU did.
    let dst_dir = dir.path().join("dst");
    for (i, name) in got.iter().enumerate().skip(1) {
        let link = std::fs::read_link(dst_dir.join(name).join("parent")).unwrap();
        assert_eq!(link, Path::new("..").join(&got[i - 1]));
    }
    let link = std::fs::read_link(dst_dir.join("images/parent")).unwrap();
    assert_eq!(link, Path::new("..").join(got.last().unwrap()));

    let stats = src.dump.stats.as_ref().expect("dump statistics");
    eprintln!(
        "final dump: {} pages written, {} taken from the passes (of {PAGES}); stopped to \
         restored {:?}",
        stats.pages_written, stats.pages_skipped_parent, src.stopped_to_restored
    );
    // A pass under heavy load takes a second or more, and the workload
    // writes 2048 pages a second: bounds with room for that.
    assert!(
        stats.pages_written * 2 < PAGES,
        "the final dump wrote only what changed: {} of {PAGES}",
        stats.pages_written
    );
    assert!(
        stats.pages_skipped_parent > PAGES / 2,
        "most pages came from the passes: {}",
        stats.pages_skipped_parent
    );

    // The memory the passes moved was left to the destination's own
    // lazy-pages daemon, not filled while the tree was stopped (where
    // the patched CRIU marks the passes' pages lazy: with userfaultfd
    // tracking). The copy was reported only once the daemon had every
    // page, so the check below reads the whole memory either way.
    let restored = dst.restore.stats.and_then(|s| s.pages_restored);
    eprintln!("pages CRIU filled before the tree resumed: {restored:?}");
    let features = criu::Criu::new().feature_check().unwrap();
    if features.lazy_pages
        && features.mem_track_method == Some(criu::MemTrackMethod::UffdWriteProtect)
    {
        let restored = restored.expect("the restore's statistics count its pages");
        assert!(
            restored < stats.pages_written + 1024,
            "the passes' pages were restored lazily: {restored} pages filled before the \
             tree resumed, the final dump wrote {}",
            stats.pages_written
        );
    }

    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    let (writes, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(
        ok,
        "every word is the last one written ({writes} page writes)"
    );
    drop(dst);
    assert!(!criu_testkit::alive(pid));
}

#[test]
fn pre_copy_in_memory_frees_what_it_sent_and_moves_word_for_word() {
    if !tracking_or_skip("pre_copy_in_memory_frees_what_it_sent_and_moves_word_for_word") {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = workload(&hosts, &dir.path().join("out.log"));
    w.wait_for_seq(w.last_seq() + 50, WAIT).unwrap();

    let run = migrate_in_memory(&hosts, w.pid());
    let src = run.src.unwrap_or_else(|e| panic!("pre-copy: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("pre-copy: {e}"));
    w.reap(WAIT).unwrap();
    w.forget();
    let stats = src.dump.stats.as_ref().expect("dump statistics");
    assert!(
        stats.pages_skipped_parent > PAGES / 2,
        "most pages came from the passes, freed on the source once sent: {}",
        stats.pages_skipped_parent
    );
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    let (writes, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(
        ok,
        "every word is the last one written ({writes} page writes)"
    );
    drop(dst);
    assert!(!criu_testkit::alive(pid));
}

#[test]
fn a_destination_refusing_the_restore_leaves_the_source_intact() {
    if !tracking_or_skip("a_destination_refusing_the_restore_leaves_the_source_intact") {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = workload(&hosts, &dir.path().join("out.log"));
    w.wait_for_seq(w.last_seq() + 50, WAIT).unwrap();

    // Refused at post-restore, which CRIU 4.2.1 treats as fatal: it kills
    // the restored tree. A refusal at pre-resume is only logged by CRIU,
    // which then leaves the restored copy stopped while libcriu has
    // already returned the error, so nobody owns that copy.
    let run = migrate(&hosts, w.pid(), dir.path(), |c| {
        c.customize(|o| {
            o.on_notify(|n| match n.event {
                criu::Event::PostRestore => std::ops::ControlFlow::Break("not here".into()),
                _ => std::ops::ControlFlow::Continue(()),
            });
        })
    });
    let e = run.src.expect_err("the destination refused");
    let d = run.dst.expect_err("the destination refused");
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
    assert!(d.to_string().contains("not here"), "{d}");

    // The source runs on, where it was, with every word right.
    let seq = w.last_seq();
    w.wait_for_seq(seq + 50, WAIT).unwrap();
    assert!(w.is_running(), "the source runs on");
    let (writes, ok) = w.verify_memory(w.pid(), WAIT).unwrap();
    assert!(ok, "the source's memory is intact ({writes} page writes)");
    // What the destination received is gone.
    let dst_dir = dir.path().join("dst");
    assert!(passes(&dst_dir).is_empty(), "{:?}", passes(&dst_dir));
    assert!(!dst_dir.join("images").exists());
}

/// The destination's own lazy-pages daemon (see `strategy/pre_copy.rs`)
/// killed at post-restore, before the restored tree resumes: the
/// destination fails (CRIU 4.2.1 fails the restore itself; had the tree
/// resumed, the daemon's exit would fail the move and kill the copy), and
/// the source, never released, resumes with every word right.
#[test]
fn a_lazy_pages_daemon_that_dies_fails_the_move_and_the_source_resumes() {
    let test = "a_lazy_pages_daemon_that_dies_fails_the_move_and_the_source_resumes";
    if !tracking_or_skip(test) {
        return;
    }
    if !Criu::new().feature_check().unwrap().lazy_pages {
        criu_testkit::skip::skip(
            &format!("migrate_precopy::{test}"),
            "CRIU cannot restore lazily here (no userfaultfd), so pre-copy's destination \
             restores without a lazy-pages daemon",
        );
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = workload(&hosts, &dir.path().join("out.log"));
    w.wait_for_seq(w.last_seq() + 50, WAIT).unwrap();

    let needle = dir.path().join("dst").to_string_lossy().into_owned();
    let killed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (seen, restored) = (
        killed.clone(),
        std::sync::Arc::new(std::sync::Mutex::new(None)),
    );
    let named = restored.clone();
    let run = migrate(&hosts, w.pid(), dir.path(), move |c| {
        c.customize(move |o| {
            let (seen, named, needle) = (seen.clone(), named.clone(), needle.clone());
            o.on_notify(move |n| {
                if let (criu::Event::PostRestore, Some(pid)) = (&n.event, n.pid) {
                    *named.lock().unwrap() = Some(pid);
                    let daemon = criu_testkit::find_process(&needle);
                    if let Some(p) = daemon {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    *seen.lock().unwrap() = daemon;
                }
                std::ops::ControlFlow::Continue(())
            });
        })
    });
    assert!(
        killed.lock().unwrap().is_some(),
        "a lazy-pages daemon served the restore from {}",
        dir.path().join("dst").display()
    );
    let e = run.src.expect_err("the daemon died");
    let d = run.dst.expect_err("the daemon died");
    eprintln!("source: {e}\ndestination: {d}");
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");

    // The restored copy is gone; the source runs on, every word right.
    let copy = restored
        .lock()
        .unwrap()
        .expect("CRIU named the restored root");
    assert!(
        criu_testkit::wait_until(WAIT, || !criu_testkit::alive(copy)),
        "the restored copy {copy} is killed"
    );
    let seq = w.last_seq();
    w.wait_for_seq(seq + 50, WAIT).unwrap();
    assert!(w.is_running(), "the source runs on");
    let (writes, ok) = w.verify_memory(w.pid(), WAIT).unwrap();
    assert!(ok, "the source's memory is intact ({writes} page writes)");
}
