//! The registry route as a strategy of `criu::migrate`, implemented in
//! criu-oci through criu-rs's public seam (`criu_oci::strategy`): a live
//! workload moves between two network-namespace hosts through a real
//! registry (docker-registry in a third namespace), over
//! `criu::migrate::send_with` / `receive_with`. Needs root and the
//! docker-registry package.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use criu::migrate::strategy::{DumpPlan, Restored, Source, SourceStrategy};
use criu::migrate::{
    receive_with, send_with, Cancel, DestConfig, DestReport, SourceConfig, SourceReport,
    SourceState, Step, Strategy,
};
use criu_oci::parts::{PART_FILE, PART_MEDIA_TYPE, PART_OFFSET};
use criu_oci::strategy::{PullFrom, PushTo};
use criu_oci::{ArchiveMeta, HostFacts, Limits, Registry, RegistryConfig};
use criu_testkit::hosts::{netns_of, TwoHosts};
use criu_testkit::registry::RegistryHost;
use criu_testkit::{aftermath, fixture, Workload};
use serde::Serialize;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// Both sides of one move from host a to host b.
struct Move {
    src: criu::Result<SourceReport>,
    dst: criu::Result<DestReport>,
}

/// Moves the tree of `pid` from host a to host b with the registry
/// strategy: `push` on host a, `pull` on host b, over a TCP stream between
/// them, each side's images in `dir/src` and `dir/dst`, the source
/// cancelled by `cancel`.
fn move_tree(
    hosts: &TwoHosts,
    pid: i32,
    dir: &Path,
    push: &mut (dyn SourceStrategy + Send),
    pull: &mut PullFrom<'_>,
    cancel: &Cancel,
) -> Move {
    let (src_dir, dst_dir) = fixture::migration_dirs(dir);
    let listener = hosts
        .b
        .run(|| TcpListener::bind((hosts.b.addr, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        let dst = s.spawn(|| {
            hosts
                .b
                .run(|| {
                    let (mut stream, _) = listener.accept().expect("accepting the source");
                    let cfg = DestConfig::new()
                        .work_dir(&dst_dir)
                        .deadline(Duration::from_secs(60));
                    receive_with(&criu::Criu::new(), &mut stream, cfg, pull)
                })
                .unwrap()
        });
        let src = hosts
            .a
            .run(|| {
                let mut stream = std::net::TcpStream::connect(addr).expect("connecting to b");
                // The strategy is the registry's; the config's is not used.
                let cfg = SourceConfig::new(Strategy::StopAndCopy)
                    .work_dir(&src_dir)
                    .cancel(cancel)
                    .deadline(Duration::from_secs(60));
                send_with(&criu::Criu::new(), pid, &mut stream, cfg, push)
            })
            .unwrap();
        let dst = dst.join().expect("the destination thread");
        Move { src, dst }
    })
}

/// A plain-HTTP client that gives up after 10 s.
fn client() -> Registry {
    Registry::new(&RegistryConfig {
        plain_http: true,
        timeout: Some(Duration::from_secs(10)),
        ..RegistryConfig::default()
    })
    .unwrap()
}

/// The destination's side, through `b`: pulls what the source names
/// under `reg`'s `criu-rs/` repositories. (Not a method of [`Scene`]: it
/// borrows the client alone, and the workload stays free to change.)
fn pull_from<'r>(reg: &RegistryHost, b: &'r Registry) -> PullFrom<'r> {
    let prefix = format!("{}/criu-rs/", reg.address());
    PullFrom::new(b, &prefix, Limits::default())
}

/// A move's setting: two hosts, a registry host beside them with a fresh
/// reference and a client of it on each host, and a counting workload of
/// `mib` MiB on host a, writing to `out`. Dropped in field order: the
/// workload first, the hosts and the directory last.
struct Scene {
    w: Workload,
    /// The workload's memory checksum before the move.
    sum: String,
    out: std::path::PathBuf,
    /// The registry's client on host a (the source's).
    a: Registry,
    /// Its client on host b (the destination's).
    b: Registry,
    reference: String,
    reg: RegistryHost,
    hosts: TwoHosts,
    dir: tempfile::TempDir,
}

impl Scene {
    /// The setting, its workload counting past `seq`; `name` names the
    /// reference's repository.
    fn new(name: &str, mib: usize, seq: u64) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let reg = RegistryHost::start(&hosts, None).unwrap();
        let reference = reg.fresh_reference(name);
        let (a, b) = reg.clients(&hosts, &reference).unwrap();
        let out = dir.path().join("out.log");
        let w = fixture::counter_on(&hosts.a, &out, mib);
        let sum = w.memory_checksum().unwrap();
        w.wait_for_seq(seq, WAIT).unwrap();
        Scene {
            w,
            sum,
            out,
            a,
            b,
            reference,
            reg,
            hosts,
            dir,
        }
    }

    /// Moves the workload from host a to host b with `push`, the source
    /// cancelled by `cancel`.
    fn move_with(
        &self,
        push: &mut (dyn SourceStrategy + Send),
        pull: &mut PullFrom<'_>,
        cancel: &Cancel,
    ) -> Move {
        move_tree(
            &self.hosts,
            self.w.pid(),
            self.dir.path(),
            push,
            pull,
            cancel,
        )
    }

    /// What must hold after a move from host a that failed: the workload
    /// runs on, on host a, its memory intact, with no copy of it
    /// elsewhere, no process left on host b, nothing in the destination's
    /// work directory.
    fn only_the_source_runs(&mut self) {
        let w = &mut self.w;
        assert!(w.is_running() && w.advances(WAIT), "the source runs on");
        let (now, ok) = w.verify_memory(w.pid(), WAIT).unwrap();
        assert!(ok && now == self.sum, "its memory is intact");
        let copies = aftermath::copies(Path::new(BIN), &self.out);
        assert_eq!(copies.len(), 1, "exactly one copy runs: {copies:?}");
        let on_b = aftermath::netns_pids(&self.hosts.b).unwrap();
        assert!(on_b.is_empty(), "no process on host b: {on_b:?}");
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("dst"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "nothing left on the destination: {left:?}");
        let ticks = w.ticks();
        assert!(
            ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
            "the counter went on where it stopped"
        );
    }
}

#[test]
fn the_registry_strategy_moves_a_live_workload_through_a_registry() {
    // Several 32 MiB parts of pages, pushed while CRIU writes them and
    // fetched by the destination as the source announces them.
    let mut sc = Scene::new("strategy", 130, 50);
    let mut push = PushTo::new(&sc.a, &sc.reference, "counter");
    let mut pull = pull_from(&sc.reg, &sc.b);
    let run = sc.move_with(&mut push, &mut pull, &Cancel::new());
    let src = run.src.unwrap_or_else(|e| panic!("source: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("destination: {e}"));

    // The source copy is gone: killed once the destination kept its own.
    sc.w.reap(WAIT).unwrap();
    let seq_at_stop = sc.w.last_seq();
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    assert!(dst.source_confirmed, "the source confirmed its end");
    assert_eq!(netns_of(pid).unwrap(), sc.hosts.b.netns_inode().unwrap());
    sc.w.wait_for_seq(seq_at_stop + 50, WAIT).unwrap();
    let (sum_after, ok) = sc.w.verify_memory(pid, WAIT).unwrap();
    assert!(
        ok && sum_after == sc.sum,
        "the memory pattern crossed intact"
    );
    // Both copies write the one log: a source that ran on after its dump
    // (not held while the image crossed the registry) would repeat
    // numbers the destination writes again.
    let ticks = sc.w.ticks();
    assert!(
        ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
        "no repeat, no reset"
    );
    assert_eq!(src.strategy, criu_oci::strategy::NAME);
    assert_eq!(dst.strategy, criu_oci::strategy::NAME);
    // The memory went through the registry, not the stream.
    assert_eq!(src.transfer.bytes, 0, "no images over the stream");
    assert!(
        src.page_server_bytes >= 40 << 20,
        "the layer carried the memory: {} bytes",
        src.page_server_bytes
    );
    let pushed = push.pushed().expect("pushed");
    assert!(pushed.parts >= 5, "the pages in parts: {pushed:?}");
    let pulled = pull.pulled().expect("pulled");
    // The pull overlapped the push: every part was fetched as the source
    // announced it, the first asked for before the source had pushed the
    // rest (the archive and the manifest go up only after every part was
    // in the registry and announced).
    assert_eq!(pulled.parts_prefetched, pushed.parts, "{pulled:?}");
    let fetched = pulled.first_part_fetched.expect("a part fetched early");
    let written = pulled.first_part_written.expect("a part written early");
    let push_ended = push.push_ended().expect("the push's end");
    assert!(
        fetched < push_ended,
        "the first part was asked for {:?} after the push ended",
        fetched.duration_since(push_ended)
    );
    // Whether it was also written before depends on the two hosts'
    // speeds (debug builds here); said, not asserted.
    eprintln!(
        "first part asked for {:?} and written {:?} before the push ended",
        push_ended.saturating_duration_since(fetched),
        push_ended.checked_duration_since(written)
    );
    assert_eq!(pulled.reference, sc.reference);
    assert_eq!(pulled.layer_digest, pushed.layer_digest);
    assert_eq!(pulled.pull.layer_bytes, pushed.push.layer_bytes);
    drop(dst);
    assert!(!criu_testkit::alive(pid));
}

#[test]
fn an_unreachable_registry_leaves_the_source_running() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    // The registry's namespace and bridge, and a port nothing listens on.
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let address = reg.address();
    let (host, _) = address.rsplit_once(':').unwrap();
    let reference = format!("{host}:5999/criu-rs/unreachable:latest");
    let (a, b) = (client(), client());
    let mut w: Workload = fixture::counter_on(&hosts.a, &dir.path().join("out.log"), 1);
    w.wait_for_seq(20, WAIT).unwrap();

    let mut push = PushTo::new(&a, &reference, "counter");
    let mut pull = PullFrom::new(&b, &format!("{host}:5999/"), Limits::default());
    let run = move_tree(
        &hosts,
        w.pid(),
        dir.path(),
        &mut push,
        &mut pull,
        &Cancel::new(),
    );
    let e = run.src.expect_err("the push cannot succeed");
    let d = run.dst.expect_err("the destination is told");
    let m = e.migration_error().expect("a migration error");
    assert_eq!(m.step(), Step::Transfer, "{e}");
    assert_eq!(m.source_state(), SourceState::Resumed, "{e}");
    let dm = d.migration_error().expect("a migration error");
    assert_eq!(dm.step(), Step::Transfer, "the source's step: {d}");
    assert_eq!(dm.source_state(), SourceState::Resumed, "{d}");
    assert!(w.is_running(), "the source process is alive: {e}");
    assert!(w.advances(WAIT), "and running again: {e}");
    assert!(push.pushed().is_none() && pull.pulled().is_none());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("dst")).unwrap().collect();
    assert!(left.is_empty(), "nothing left on the destination: {left:?}");
    let ticks = w.ticks();
    assert!(
        ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1),
        "the counter went on where it stopped"
    );
    // Dropping `w` kills and reaps the source; `reg` and `hosts` go after.
    drop(w);
    drop(reg);
}

/// The registry strategy's messages as criu-oci's source sends them
/// (`criu_oci::strategy`'s own type is private; the stream carries them
/// as JSON, by variant and field names): what a source of another make
/// could send. If criu-oci's changed, the destination would refuse these
/// as undecodable, and the test below would fail on its message.
#[derive(Debug, Serialize)]
enum Own {
    Pushing {
        reference: String,
    },
    Part(Part),
    Pushed {
        reference: String,
        layer_digest: String,
        layer_bytes: u64,
    },
}

/// A part of the pages, as a manifest lists it and a source announces it.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Part {
    file: String,
    offset: u64,
    digest: String,
    size: u64,
}

/// The pages parts the manifest tagged `reference` lists, in its order,
/// read from the registry's own storage.
fn listed_parts(reg: &RegistryHost, reference: &str) -> Vec<Part> {
    let (_, path) = reference.split_once('/').unwrap();
    let (repo, tag) = path.rsplit_once(':').unwrap();
    let link = reg
        .storage()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link");
    let digest = std::fs::read_to_string(&link).unwrap();
    let manifest = std::fs::read(reg.blob_path(digest.trim())).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let note =
        |l: &serde_json::Value, key: &str| l["annotations"][key].as_str().unwrap().to_string();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == PART_MEDIA_TYPE)
        .map(|l| Part {
            file: note(l, PART_FILE),
            offset: note(l, PART_OFFSET).parse().unwrap(),
            digest: l["digest"].as_str().unwrap().to_string(),
            size: l["size"].as_u64().unwrap(),
        })
        .collect()
}

/// A source of the registry strategy's name that dumps its tree and
/// pushes it for real (criu-oci's pages parts and manifest), then tells
/// the destination of only the first `announce` parts the manifest lists
/// before its (true) `Pushed`, and waits for the destination's verdict.
struct Liar<'r> {
    registry: &'r Registry,
    reg: &'r RegistryHost,
    reference: String,
    announce: usize,
    /// The parts the manifest lists, once pushed.
    listed: Vec<Part>,
}

impl SourceStrategy for Liar<'_> {
    fn name(&self) -> &str {
        criu_oci::strategy::NAME
    }

    fn run(&mut self, source: &mut Source<'_>) -> criu::Result<Restored> {
        let meta = ArchiveMeta::of_process(source.pid(), "counter");
        let host = HostFacts::current(source.criu()).expect("this host's facts");
        let dump = source.dump(DumpPlan::new())?;
        let dir = dump.dir();
        let (images, pushed) = self
            .registry
            .push_checkpoint_while(&self.reference, dir, &meta, &host, || {
                Ok(source.images_ready(dump)?)
            })
            .expect("the push");
        self.listed = listed_parts(self.reg, &self.reference);
        assert_eq!(self.listed.len(), pushed.parts, "{:?}", self.listed);
        source.send(&Own::Pushing {
            reference: self.reference.clone(),
        })?;
        for part in self.listed.iter().take(self.announce) {
            source.send(&Own::Part(part.clone()))?;
        }
        source.send(&Own::Pushed {
            reference: self.reference.clone(),
            layer_digest: pushed.layer_digest.clone(),
            layer_bytes: pushed.push.layer_bytes,
        })?;
        source.await_restore(images)
    }
}

/// `e` and its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

#[test]
fn a_destination_refuses_a_manifest_of_other_parts_than_the_announced_ones() {
    // 72 MiB of pages: three parts of at most 32 MiB.
    let mut sc = Scene::new("liar", 72, 20);
    // Only the first part announced: a prefix of the parts, which the
    // destination fetches as it would a true source's.
    let mut liar = Liar {
        registry: &sc.a,
        reg: &sc.reg,
        reference: sc.reference.clone(),
        announce: 1,
        listed: Vec::new(),
    };
    let mut pull = pull_from(&sc.reg, &sc.b);
    let run = sc.move_with(&mut liar, &mut pull, &Cancel::new());
    let listed = liar.listed.len();
    assert!(
        listed >= 3,
        "the image has several parts: {:?}",
        liar.listed
    );
    let d = run.dst.expect_err("the destination refuses the image");
    let text = chain(&d);
    eprintln!("destination: {text}");
    let why = format!("lists {listed} pages parts, not the 1 the source announced");
    assert!(text.contains(&why), "{why:?} in {text}");
    assert!(pull.pulled().is_none(), "nothing pulled");
    let e = run.src.expect_err("the source hears of the refusal");
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
    sc.only_the_source_runs();
}

#[test]
fn cancelling_the_source_while_parts_are_pushed_and_fetched_resumes_it() {
    for hook in [Hook::PartPushed, Hook::PartFetched] {
        aftermath::isolated(|| cancel_during_the_overlap(hook));
    }
}

/// When the overlap test cancels the source, as the registry's access
/// log shows.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Once the first part's blob is in the registry (the source
    /// announces it at once), CRIU still writing the pages.
    PartPushed,
    /// Once the destination fetched a part the source announced, the
    /// rest still pushed.
    PartFetched,
}

/// Cancels the source of a 192 MiB move (six parts) at `hook`, while the
/// other parts are still dumped and pushed.
fn cancel_during_the_overlap(hook: Hook) {
    let mut sc = Scene::new("cancelled", 192, 20);
    let cancel = Cancel::new();
    let mut push = PushTo::new(&sc.a, &sc.reference, "counter");
    let mut pull = pull_from(&sc.reg, &sc.b);
    let (_, repo) = sc.reference.split_once('/').unwrap();
    let (repo, _) = repo.rsplit_once(':').unwrap();
    // A blob's upload ends with its PUT; only the destination gets blobs
    // before the manifest is pushed: the parts the source announced.
    let seen = match hook {
        Hook::PartPushed => format!("PUT /v2/{repo}/blobs/uploads/"),
        Hook::PartFetched => format!("GET /v2/{repo}/blobs/sha256:"),
    };
    let tagged = format!("PUT /v2/{repo}/manifests/");
    let moving = std::sync::atomic::AtomicBool::new(true);
    let (run, at_cancel) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while moving.load(std::sync::atomic::Ordering::Acquire) {
                let requests = sc.reg.requests();
                if requests.iter().any(|r| r.starts_with(&seen)) {
                    cancel.cancel();
                    return Some(requests);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        let run = sc.move_with(&mut push, &mut pull, &cancel);
        moving.store(false, std::sync::atomic::Ordering::Release);
        (run, watcher.join().unwrap())
    });
    let what = format!("cancelled at {hook:?}");
    let at_cancel = at_cancel.unwrap_or_else(|| panic!("{what}: never seen"));
    assert!(
        !at_cancel.iter().any(|r| r.starts_with(&tagged)),
        "{what}: before the manifest was pushed: {at_cancel:?}"
    );
    let e = run.src.expect_err(&what);
    assert!(e.is_cancelled(), "{what}: {}", chain(&e));
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
    let d = run.dst.expect_err("the destination is told");
    eprintln!(
        "{what}: source: {}\n  destination: {}",
        chain(&e),
        chain(&d)
    );
    // Told before it was told to pull: it never restored a copy (to
    // have it killed once the source saw its cancellation). Cancelled
    // while CRIU dumps, the dump is refused at its end (`Step::Dump`).
    let dm = d.migration_error().expect("a migration error");
    assert!(
        matches!(dm.step(), Step::Dump | Step::Transfer),
        "{what}: {:?}: {}",
        dm.step(),
        chain(&d)
    );
    assert_eq!(dm.source_state(), SourceState::Resumed, "{}", chain(&d));
    assert!(push.pushed().is_none() && pull.pulled().is_none());
    sc.only_the_source_runs();
    drop(sc.w);
    // Nothing of the move in /dev/shm (this test's own): the registry's
    // directory only.
    let registry_dir = sc.reg.storage().parent().unwrap().to_path_buf();
    let left: Vec<_> = aftermath::shm_entries()
        .into_iter()
        .filter(|p| *p != registry_dir)
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}
