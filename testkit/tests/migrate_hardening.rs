//! Migration over other streams than TCP, and the migration's hardening:
//! what a receiver removes, limits, pidfds, the end-of-migration protocol.
//! Real CRIU, real processes. Needs root.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use criu::migrate::{self, DestConfig, SourceConfig, SourceState, Step, Strategy};
use criu::transfer::Limits;
use criu::Criu;
use criu::{InvalidKind, TransferKind};
use criu_testkit::hosts::{Migration, TwoHosts};
use criu_testkit::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// Both sides' results of one migration.
struct Run {
    src: criu::Result<migrate::SourceReport>,
    dst: criu::Result<migrate::DestReport>,
}

/// How the source reaches CRIU, and what its end of the stream is.
struct SourceEnd<S> {
    criu: Criu,
    stream: S,
}

/// Migrates `pid` over a connected unix socket pair, on this host; `src`
/// and `dst` build the two sides' settings (on their own threads: the
/// settings are not `Send`); `end` makes the source's end of the stream.
fn migrate_over_unix<'a, S: migrate::Transport>(
    pid: i32,
    end: impl FnOnce(UnixStream) -> SourceEnd<S>,
    src: impl FnOnce() -> SourceConfig<'a>,
    dst: impl FnOnce() -> DestConfig<'a> + Send,
) -> Run {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut a = end(a);
    std::thread::scope(|s| {
        let dst_side = s.spawn(move || migrate::receive(&Criu::new(), &mut b, dst()));
        let src = migrate::send(&a.criu, pid, &mut a.stream, src());
        drop(a);
        Run {
            src,
            dst: dst_side.join().unwrap(),
        }
    })
}

/// A workload (4 MiB, the init of its own PID namespace, so that its
/// restored copy can take the same pids while the source copy still holds
/// them) and the two sides' work directories.
struct Scene {
    dir: tempfile::TempDir,
    w: Workload,
    sum: Option<String>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        for side in ["src", "dst"] {
            std::fs::create_dir_all(dir.path().join(side)).unwrap();
        }
        let out = dir.path().join("out.log");
        let w = Workload::spawn_in_pid_ns(BIN.as_ref(), &out, Duration::from_millis(1), 4).unwrap();
        let sum = w.memory_checksum();
        w.wait_for_seq(20, WAIT).unwrap();
        Scene { dir, w, sum }
    }

    /// Migrates the workload over a unix socket pair; `src` and `dst` get
    /// the two sides' work directories.
    fn migrate<'a>(
        &self,
        src: impl FnOnce(PathBuf) -> SourceConfig<'a>,
        dst: impl FnOnce(PathBuf) -> DestConfig<'a> + Send,
    ) -> Run {
        let plain = |stream| SourceEnd {
            criu: Criu::new(),
            stream,
        };
        self.migrate_from(plain, src, dst)
    }

    /// Like [`Scene::migrate`], with the source's CRIU and stream from `end`.
    fn migrate_from<'a, S: migrate::Transport>(
        &self,
        end: impl FnOnce(UnixStream) -> SourceEnd<S>,
        src: impl FnOnce(PathBuf) -> SourceConfig<'a>,
        dst: impl FnOnce(PathBuf) -> DestConfig<'a> + Send,
    ) -> Run {
        let (s, d) = (self.dir.path().join("src"), self.dir.path().join("dst"));
        migrate_over_unix(self.w.pid(), end, || src(s), || dst(d))
    }

    /// The restored copy runs on from where the source stopped, with its
    /// memory intact; the source copy is gone.
    fn assert_moved(&mut self, run: Run) {
        let src = run.src.unwrap_or_else(|e| panic!("source: {e}"));
        let dst = run.dst.unwrap_or_else(|e| panic!("destination: {e}"));
        self.w.reap(WAIT).unwrap();
        let pid = dst.child.pid();
        assert_eq!(src.restored_pid, pid);
        let seq = self.w.last_seq();
        self.w.wait_for_seq(seq + 20, WAIT).unwrap();
        let (after, ok) = self.w.verify_memory(pid, WAIT).unwrap();
        assert!(ok && Some(after) == self.sum, "memory intact");
        drop(dst);
        assert!(criu_testkit::wait_gone(pid, WAIT));
    }
}

#[test]
fn stop_and_copy_over_a_unix_socket() {
    let mut sc = Scene::new();
    let run = sc.migrate(
        |s| SourceConfig::new(Strategy::StopAndCopy).work_dir(s),
        |d| DestConfig::new().work_dir(d),
    );
    sc.assert_moved(run);
}

#[test]
fn page_server_over_a_unix_socket_with_named_addresses() {
    let mut sc = Scene::new();
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let run = sc.migrate(
        |s| {
            SourceConfig::new(Strategy::PageServer)
                .work_dir(s)
                .criu_addresses(lo, lo)
        },
        |d| DestConfig::new().work_dir(d).criu_address(lo),
    );
    sc.assert_moved(run);
}

#[test]
fn page_server_over_a_unix_socket_without_addresses_is_refused_plainly() {
    let mut sc = Scene::new();
    let page_server = |s| SourceConfig::new(Strategy::PageServer).work_dir(s);
    let Run { src, dst } = sc.migrate(page_server, |d| DestConfig::new().work_dir(d));
    let e = dst.expect_err("the destination has no address for its page server");
    assert_eq!(e.cause().invalid_kind(), Some(InvalidKind::Missing), "{e}");
    let e = src.expect_err("the source fails too");
    assert_eq!(e.source_state(), Some(SourceState::Untouched), "{e}");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}

const LO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[test]
fn the_lazy_dump_goes_through_the_callers_criu() {
    // Before: the lazy dump made its own `Criu::new()`.
    let mut sc = Scene::new();
    let log = sc.dir.path().join("criu-starts.log");
    let binary = criu_testkit::fixture::recording_criu(sc.dir.path(), &log);
    let end = |stream| SourceEnd {
        criu: Criu::with_binary(&binary),
        stream,
    };
    let run = sc.migrate_from(
        end,
        |s| {
            SourceConfig::new(Strategy::Lazy)
                .work_dir(s)
                .criu_addresses(LO, LO)
        },
        |d| DestConfig::new().work_dir(d).criu_address(LO).criu_peer(LO),
    );
    sc.assert_moved(run);
    let starts = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        starts.contains("swrk"),
        "the caller's criu ran the dump: {starts:?}"
    );
}

/// The source's end of a stream that breaks when the lazy page server's
/// address is sent, and only then.
struct BreaksOnLazySource(UnixStream);

impl std::io::Read for BreaksOnLazySource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for BreaksOnLazySource {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The lazy strategy's own message `Source { addr }`, as the
        // driver frames it.
        let lazy_source = br#"{"Strategy":{"Source":"#;
        if buf.windows(lazy_source.len()).any(|w| w == lazy_source) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl migrate::Transport for BreaksOnLazySource {
    fn prepare(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        self.0.prepare(timeout)
    }
}

#[test]
fn a_lost_lazy_source_message_ends_the_lazy_dump_and_resumes_the_source() {
    // Before: `send_message(LazySource)?` returned without ending the lazy
    // dump, whose thread then waited for a lazy-pages daemon forever.
    let mut sc = Scene::new();
    let breaking = |stream| SourceEnd {
        criu: Criu::new(),
        stream: BreaksOnLazySource(stream),
    };
    let run = sc.migrate_from(
        breaking,
        |s| {
            SourceConfig::new(Strategy::Lazy)
                .work_dir(s)
                .criu_addresses(LO, LO)
        },
        |d| DestConfig::new().work_dir(d).criu_address(LO).criu_peer(LO),
    );
    let e = run.src.expect_err("the source fails");
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
    // The break, not anything before it.
    assert_eq!(e.cause().transfer_kind(), Some(TransferKind::Stream), "{e}");
    assert!(run.dst.is_err(), "the destination fails too");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}

/// A destination that takes the images and the lazy source's address,
/// claims a restore, and never fetches a page.
fn never_fetches(mut b: UnixStream, dir: &std::path::Path) {
    use std::io::Read;
    // The stream as `criu::transfer`'s documentation describes it: its
    // header once, then messages and directories; a directory is what
    // `send_dir` writes after that header.
    let mut header = [0u8; 8];
    b.read_exact(&mut header).unwrap();
    let _hello = read_message(&mut b);
    let mut dir_stream = header.as_slice().chain(&mut b);
    criu::transfer::receive_dir(
        &mut dir_stream,
        &dir.join("images"),
        &Limits::default(),
        None,
    )
    .unwrap();
    let _lazy_source = read_message(&mut b);
    let restored =
        serde_json::json!({"Restored": {"pid": 1, "wall_us": 0, "restore_time_us": null}});
    write_message(&mut b, &restored);
    // Until the source hangs up.
    let _ = std::io::copy(&mut b, &mut std::io::sink());
}

/// Reads a control message of the stream: 'M', its length (u32,
/// little-endian), its JSON.
fn read_message(r: &mut impl std::io::Read) -> serde_json::Value {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'M', "a message");
    let mut body = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Writes a control message of the stream.
fn write_message(w: &mut impl Write, msg: &serde_json::Value) {
    let body = serde_json::to_vec(msg).unwrap();
    w.write_all(b"M").unwrap();
    w.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    w.write_all(&body).unwrap();
    w.flush().unwrap();
}

/// Writes the stream's header, as `criu::transfer::send_dir` does first.
fn write_header(w: &mut impl Write) {
    let mut stream = Vec::new();
    let empty = tempfile::tempdir().unwrap();
    criu::transfer::send_dir(&mut stream, empty.path(), None).unwrap();
    w.write_all(&stream[..8]).unwrap();
}

/// Writes `dir` as a directory of the migration's stream: what `send_dir`
/// writes after the header it starts with (the migration sends its header
/// once, before its first message).
fn send_files(w: &mut impl Write, dir: &Path) {
    let mut stream = Vec::new();
    criu::transfer::send_dir(&mut stream, dir, None).unwrap();
    w.write_all(&stream[8..]).unwrap();
    w.flush().unwrap();
}

/// Reads a control message, or says why none came.
fn try_read_message(r: &mut impl std::io::Read) -> std::io::Result<serde_json::Value> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let mut body = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

#[test]
fn the_source_deadline_bounds_a_lazy_dump_nobody_fetches_from() {
    // Before: the lazy dump had no deadline, and after the lazy timeout the
    // source joined its thread, which waited for a lazy-pages daemon forever.
    let mut sc = Scene::new();
    let (a, b) = UnixStream::pair().unwrap();
    let (src_dir, dst_dir) = (sc.dir.path().join("src"), sc.dir.path().join("dst"));
    let src = std::thread::scope(|s| {
        s.spawn(|| never_fetches(b, &dst_dir));
        let cfg = SourceConfig::new(Strategy::Lazy)
            .work_dir(&src_dir)
            .criu_addresses(LO, LO)
            .deadline(Duration::from_secs(3));
        let mut a = a;
        migrate::send(&Criu::new(), sc.w.pid(), &mut a, cfg)
    });
    let e = src.expect_err("the source gives up");
    assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}

/// The workload on host a of fresh hosts, as the init of its own PID
/// namespace (on one machine both hosts share pid numbers).
struct TwoHostScene {
    hosts: TwoHosts,
    dir: tempfile::TempDir,
    w: Workload,
}

impl TwoHostScene {
    fn new() -> TwoHostScene {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let out = dir.path().join("out.log");
        let w = hosts
            .a
            .run(|| Workload::spawn_in_pid_ns(BIN.as_ref(), &out, Duration::from_millis(1), 4))
            .unwrap()
            .unwrap();
        w.wait_for_seq(20, WAIT).unwrap();
        for side in ["src", "dst"] {
            std::fs::create_dir_all(dir.path().join(side)).unwrap();
        }
        TwoHostScene { hosts, dir, w }
    }

    fn dst(&self) -> PathBuf {
        self.dir.path().join("dst")
    }

    /// Stop-and-copy from host a to host b over TCP, through `relay` if
    /// given; `dst` adjusts the destination's settings.
    fn migrate<'a>(
        &'a self,
        dst: impl FnOnce(DestConfig<'a>) -> DestConfig<'a> + Send,
        relay: Option<criu_testkit::hosts::Relay>,
    ) -> Migration {
        self.migrate_with(Strategy::StopAndCopy, dst, relay)
    }

    /// Like [`TwoHostScene::migrate`], with `strategy`.
    fn migrate_with<'a>(
        &'a self,
        strategy: Strategy,
        dst: impl FnOnce(DestConfig<'a>) -> DestConfig<'a> + Send,
        relay: Option<criu_testkit::hosts::Relay>,
    ) -> Migration {
        let src = self.dir.path().join("src");
        let dst_dir = self.dst();
        self.hosts
            .migrate(
                self.w.pid(),
                || SourceConfig::new(strategy).work_dir(src),
                || dst(DestConfig::new().work_dir(dst_dir)),
                relay,
            )
            .unwrap()
    }

    /// The migration failed on both sides, the destination's error is
    /// what `expect` accepts, and the source runs on.
    fn assert_source_runs_on(&mut self, run: Migration, expect: impl Fn(&criu::Error) -> bool) {
        let e = run.src.expect_err("the source fails");
        assert_eq!(e.source_state(), Some(SourceState::Resumed), "{e}");
        let d = run.dst.expect_err("the destination fails");
        assert!(expect(&d), "{d}");
        assert!(
            self.w.is_running() && self.w.advances(WAIT),
            "the source runs on"
        );
    }
}

/// Plants `name/precious` in `dir`.
fn plant(dir: &std::path::Path, name: &str) -> PathBuf {
    let planted = dir.join(name);
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("precious"), b"not yours").unwrap();
    planted.join("precious")
}

#[test]
fn an_images_directory_already_on_the_destination_is_left_alone() {
    // Before: a refused migration removed `images` wholesale.
    let mut sc = TwoHostScene::new();
    let precious = plant(&sc.dst(), "images");
    let run = sc.migrate(|c| c, None);
    sc.assert_source_runs_on(run, |d| {
        d.cause().transfer_kind() == Some(TransferKind::TargetExists)
    });
    assert_eq!(std::fs::read(&precious).unwrap(), b"not yours");
}

#[test]
fn a_strangers_bytes_on_the_port_remove_nothing() {
    // Before: `images` and `images.rest` were removed on any error.
    let dir = tempfile::tempdir().unwrap();
    let kept = [
        plant(dir.path(), "images"),
        plant(dir.path(), "images.rest"),
    ];
    let hosts = TwoHosts::new().unwrap();
    let listener = hosts
        .b
        .run(|| TcpListener::bind((hosts.b.addr, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stranger = hosts
        .a
        .run(|| {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let e = migrate::receive(
        &Criu::new(),
        &mut stream,
        DestConfig::new().work_dir(dir.path()),
    )
    .unwrap_err();
    assert_eq!(e.migration_error().map(|m| m.step()), Some(Step::Handshake));
    assert_eq!(
        e.cause().transfer_kind(),
        Some(TransferKind::NotAStream),
        "{e}"
    );
    // Without a deadline, a silent peer would have met the default timeout.
    assert_eq!(
        stream.read_timeout().unwrap(),
        Some(Duration::from_secs(120))
    );
    for f in &kept {
        assert_eq!(std::fs::read(f).unwrap(), b"not yours");
    }
    drop(stranger);
}

#[test]
fn a_silent_source_is_given_up_after_the_idle_timeout() {
    // Before: without a deadline the receiver waited forever.
    let (silent, mut b) = UnixStream::pair().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let quick = Limits::default().idle_timeout(Duration::from_millis(300));
    let cfg = DestConfig::new().work_dir(dir.path()).limits(quick);
    let e = migrate::receive(&Criu::new(), &mut b, cfg).unwrap_err();
    assert_eq!(
        e.cause().transfer_kind(),
        Some(TransferKind::TimedOut),
        "{e}"
    );
    drop(silent);
}

#[test]
fn limits_of_the_destination_apply_to_a_migration() {
    let mut sc = TwoHostScene::new();
    let run = sc.migrate(|c| c.limits(Limits::default().max_files(3)), None);
    sc.assert_source_runs_on(run, |d| {
        d.cause().transfer_kind() == Some(TransferKind::Limit)
    });
    let left = std::fs::read_dir(sc.dst()).unwrap().count();
    assert_eq!(left, 0, "nothing left on the destination");
}

/// Forwards both ways until the destination's "restored" passes, then
/// lets nothing more through: the source's `Done` never arrives, nor any
/// answer to it.
fn lose_the_end(mut from_src: TcpStream, mut to_dst: TcpStream) {
    let (mut fwd_from, mut fwd_to) = (from_src.try_clone().unwrap(), to_dst.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut fwd_from, &mut fwd_to);
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match std::io::Read::read(&mut to_dst, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if buf[..n].windows(8).any(|w| w == b"Restored") {
            // Before the source can answer: the destination hears no more.
            let _ = to_dst.shutdown(std::net::Shutdown::Write);
        }
        if from_src.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from_src.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_lost_end_of_migration_leaves_a_copy_running() {
    // Before: the source killed its copy, then sent `Done` unchecked; the
    // destination, without `Done`, killed the only copy left.
    let mut sc = TwoHostScene::new();
    let run = sc.migrate(|c| c, Some(lose_the_end));
    let dst = run.dst.expect("the destination keeps its restored copy");
    assert!(!dst.source_confirmed);
    assert!(
        criu_testkit::alive(dst.child.pid()),
        "the restored copy runs"
    );
    let e = run.src.expect_err("the source could not confirm the end");
    assert_eq!(
        e.source_state(),
        Some(SourceState::PossiblyRunningTwice),
        "{e}"
    );
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "and so does the source"
    );
}

/// Kills `pid` (the init of a PID namespace, reaped by its `unshare`),
/// then starts an unrelated process under the same pid (clone3's set_tid:
/// no write to the namespace's shared `ns_last_pid`). `None` if another
/// process took the pid meanwhile.
fn reuse_pid(pid: i32) -> Option<criu_testkit::pid::PidHolder> {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(criu_testkit::wait_gone(pid, WAIT), "{pid} reaped");
    criu_testkit::pid::PidHolder::sleep_as(pid, Duration::from_secs(600)).ok()
}

#[test]
fn the_source_never_kills_a_process_that_reused_a_pid_of_its_tree() {
    // Before: the stopped tree was killed by raw pid after the restore.
    let mut sc = TwoHostScene::new();
    let pid = sc.w.pid();
    let innocent = std::sync::Mutex::new(None);
    let run = sc.migrate(
        |c| {
            // Once the images are on the destination, before its restore:
            // the source's root dies and its pid goes to a stranger.
            c.customize(|_| *innocent.lock().unwrap() = reuse_pid(pid))
        },
        None,
    );
    run.src.unwrap();
    let dst = run.dst.unwrap();
    sc.w.reap(WAIT).unwrap();
    let mut innocent = innocent.lock().unwrap().take().expect("the pid was reused");
    assert!(
        innocent.is_running(),
        "the process that reused pid {pid} was left alone"
    );
    drop(innocent);
    drop(dst);
}

#[test]
fn a_held_tree_never_signals_a_process_that_reused_a_pid_of_it() {
    // The hold of criu-oci's registry route signalled raw pids before it
    // used `criu::migrate::hold`.
    let mut tree = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = tree.id() as i32;
    let held = criu::migrate::hold::HeldTree::stop(pid).unwrap();
    assert_eq!(held.pids(), vec![pid]);
    // The held task dies (not through the hold) and its pid is reused.
    let _ = tree.kill();
    let _ = tree.wait();
    let mut innocent = reuse_pid(pid).expect("the pid was reused");
    held.kill();
    assert!(
        innocent.is_running(),
        "the process that reused {pid} was left alone"
    );
}

/// The crate's in-memory work directories that hold images of a tree
/// with a file under `ours` open (the scene's own directory: other
/// programs on this machine may migrate at the same time).
fn in_memory_images(ours: &Path) -> Vec<PathBuf> {
    let marker = ours.as_os_str().as_encoded_bytes();
    let mentions_ours = |p: &PathBuf| {
        std::fs::read(p.join("images/files.img"))
            .is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker))
    };
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("/criu-rs-migrate-"))
        .filter(mentions_ours)
        .collect()
}

/// The in-memory tests look at /dev/shm as a whole: one at a time.
static IN_MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Migrates with the default settings (images in memory on both sides);
/// `restore` adjusts the destination's restore. Returns the run and the in-memory image
/// directories seen just before the destination's restore.
fn migrate_in_memory(
    sc: &TwoHostScene,
    restore: impl Fn(&mut criu::Options<'_>) + Sync + Send,
) -> (Migration, Vec<PathBuf>) {
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |o: &mut criu::Options<'_>| {
        *seen.lock().unwrap() = in_memory_images(sc.dir.path());
        restore(o);
    };
    let run = sc
        .hosts
        .migrate(
            sc.w.pid(),
            || SourceConfig::new(Strategy::StopAndCopy),
            || DestConfig::new().customize(record),
            None,
        )
        .unwrap();
    (run, seen.into_inner().unwrap())
}

fn assert_used_and_removed(seen: &[PathBuf]) {
    assert_eq!(
        seen.len(),
        2,
        "both sides' images were in /dev/shm: {seen:?}"
    );
    assert!(seen.iter().all(|p| !p.exists()), "and are gone: {seen:?}");
}

#[test]
fn images_are_in_memory_by_default_and_removed_after_a_migration() {
    let _one = IN_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    let mut sc = TwoHostScene::new();
    let (run, seen) = migrate_in_memory(&sc, |_| {});
    let src = run.src.unwrap();
    let dst = run.dst.unwrap();
    sc.w.reap(WAIT).unwrap();
    assert_eq!(src.restored_pid, dst.child.pid());
    assert_used_and_removed(&seen);
}

#[test]
fn images_in_memory_by_default_are_removed_after_a_failed_migration() {
    let _one = IN_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    let mut sc = TwoHostScene::new();
    let (run, seen) = migrate_in_memory(&sc, |o| {
        o.join_ns(criu::Namespace::Uts, "/nonexistent-criu-rs-ns", None);
    });
    sc.assert_source_runs_on(run, |d| {
        d.migration_error().map(|m| m.step()) == Some(Step::Restore)
    });
    assert_used_and_removed(&seen);
}

/// The children of `pid` (its main thread's).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_tree_of_two_tasks_moves_with_stop_and_copy_streaming_their_pages() {
    // Before: the pages images of two tasks went out interleaved while the
    // dump wrote them, which the receiver refused ("unexpected frame").
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--", "setsid", "sh", "-c"])
        .arg(format!(
            "'{BIN}' '{}' --interval-us 1000 --memory-mib 4 & wait",
            out.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut w = Workload::start_wrapped(cmd, &out, 4).unwrap();
    let root = w.pid();
    assert_eq!(children(root).len(), 1, "a shell and its workload");
    let plain = |stream| SourceEnd {
        criu: Criu::new(),
        stream,
    };
    let run = migrate_over_unix(
        root,
        plain,
        || SourceConfig::new(Strategy::StopAndCopy),
        DestConfig::new,
    );
    let src = run.src.unwrap_or_else(|e| panic!("source: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("destination: {e}"));
    w.reap(WAIT).unwrap();
    assert_eq!(src.restored_pid, dst.child.pid());
    assert_eq!(children(dst.child.pid()).len(), 1, "both tasks restored");
    let seq = w.last_seq();
    w.wait_for_seq(seq + 20, WAIT).unwrap();
    let pid = dst.child.pid();
    drop(dst);
    assert!(criu_testkit::wait_gone(pid, WAIT));
}

/// Whether `dir` holds nothing.
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().count() == 0
}

#[test]
fn a_page_server_migration_over_the_destinations_limits_is_refused_before_it_starts() {
    // Before: the page server took every page the dump sent, whatever the
    // destination's limits (it could fill /dev/shm).
    let mut sc = TwoHostScene::new();
    let small = Limits::default().max_total_bytes(1 << 20);
    let run = sc.migrate_with(Strategy::PageServer, |c| c.limits(small), None);
    let e = run.src.expect_err("the source is refused");
    assert_eq!(e.source_state(), Some(SourceState::Untouched), "{e}");
    let d = run.dst.expect_err("the destination refuses");
    assert_eq!(d.cause().transfer_kind(), Some(TransferKind::Limit), "{d}");
    assert!(is_empty(&sc.dst()), "nothing left on the destination");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}

/// Speaks the migration's protocol from host a, on a stream to `dst`,
/// as `talk` says, after the header.
fn lying_source<T: Send>(
    sc: &TwoHostScene,
    dst: std::net::SocketAddr,
    talk: impl FnOnce(&mut TcpStream) -> T + Send,
) -> T {
    sc.hosts
        .a
        .run(|| {
            let mut s = TcpStream::connect(dst).unwrap();
            write_header(&mut s);
            talk(&mut s)
        })
        .unwrap()
}

/// Runs `migrate::receive` in host b with `cfg` while `source` talks to
/// it from host a.
fn receive_from_liar<'a, T: Send>(
    sc: &TwoHostScene,
    cfg: impl FnOnce() -> DestConfig<'a> + Send,
    source: impl FnOnce(std::net::SocketAddr) -> T + Send,
) -> (criu::Result<migrate::DestReport>, T) {
    let b = &sc.hosts.b;
    let listener = b.run(|| TcpListener::bind((b.addr, 0))).unwrap().unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        let dst = s.spawn(|| {
            b.run(|| {
                let (mut stream, _) = listener.accept().unwrap();
                migrate::receive(&Criu::new(), &mut stream, cfg())
            })
            .unwrap()
        });
        let said = source(addr);
        (dst.join().unwrap(), said)
    })
}

#[test]
fn a_page_server_that_passes_the_destinations_limits_is_killed() {
    // A source that announces 4 KiB of memory and dumps 4 MiB into the
    // page server. Before: the page server took all of it.
    let mut sc = TwoHostScene::new();
    let small = Limits::default().max_total_bytes(1 << 20);
    let dst_dir = sc.dst();
    let images = sc.dir.path().join("src/images");
    let pid = sc.w.pid();
    let (dst, dumped) = receive_from_liar(
        &sc,
        || DestConfig::new().work_dir(&dst_dir).limits(small),
        |addr| {
            lying_source(&sc, addr, |s| {
                let hello =
                    serde_json::json!({"Hello": {"strategy": "page-server", "memory": 4096}});
                write_message(s, &hello);
                let ready = read_message(s);
                let port = ready["Strategy"]["Ready"]["port"].as_u64().expect("a port") as u16;
                let dir = criu::ImagesDir::create(&images).unwrap();
                let mut o = criu::Options::new();
                o.pid(pid)
                    .images_dir(&dir)
                    .leave_running(true)
                    .log_file("dump.log")
                    .page_server(std::net::SocketAddr::new(addr.ip(), port));
                let dumped = Criu::new().dump(&mut o);
                let _ = s.shutdown(std::net::Shutdown::Both);
                dumped
            })
        },
    );
    let d = dst.expect_err("the destination stops the page server");
    assert_eq!(
        d.migration_error().map(|m| m.step()),
        Some(Step::Transfer),
        "{d}"
    );
    assert_eq!(d.cause().transfer_kind(), Some(TransferKind::Limit), "{d}");
    assert!(dumped.is_err(), "the dump lost its page server");
    assert!(is_empty(&dst_dir), "nothing left on the destination");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}

#[test]
fn a_trickling_source_is_given_up_at_the_time_limit() {
    // A source that sends one byte of a file every 100 ms: never idle for
    // long. Before: the receive went on for as long as the source did.
    let sc = TwoHostScene::new();
    let dst_dir = sc.dst();
    let start = std::time::Instant::now();
    let (dst, _) = receive_from_liar(
        &sc,
        || {
            DestConfig::new()
                .work_dir(&dst_dir)
                .time_limit(Duration::from_secs(2))
        },
        |addr| {
            lying_source(&sc, addr, |s| {
                let hello = serde_json::json!({"Hello": {"strategy": "stop-and-copy"}});
                write_message(s, &hello);
                let name = b"pages-1.img";
                let mut frame = vec![b'F'];
                frame.extend((name.len() as u16).to_le_bytes());
                frame.extend(name);
                frame.extend(0o600u32.to_le_bytes());
                frame.extend((1u64 << 20).to_le_bytes());
                s.write_all(&frame).unwrap();
                // At most 20 s, then hang up.
                for _ in 0..200 {
                    if s.write_all(&[0]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        },
    );
    let d = dst.expect_err("the destination gives up");
    let m = d.migration_error().expect("a migration error");
    assert!(m.is_time_limit_exceeded(), "{d}");
    assert!(!m.is_cancelled(), "{d}");
    assert_eq!(m.step(), Step::Transfer, "{d}");
    assert!(start.elapsed() < Duration::from_secs(15), "{d}");
    assert!(is_empty(&dst_dir), "nothing left on the destination");
}

#[test]
fn a_lazy_source_on_another_host_than_the_peers_is_refused() {
    // Before: the destination's lazy-pages daemon connected wherever the
    // source said.
    let sc = TwoHostScene::new();
    let b = &sc.hosts.b;
    let decoy = b.run(|| TcpListener::bind((b.addr, 0))).unwrap().unwrap();
    let decoy_addr = decoy.local_addr().unwrap();
    decoy.set_nonblocking(true).unwrap();
    let dst_dir = sc.dst();
    let images = tempfile::tempdir().unwrap();
    std::fs::write(images.path().join("inventory.img"), b"x").unwrap();
    let (dst, _) = receive_from_liar(
        &sc,
        || DestConfig::new().work_dir(&dst_dir),
        |addr| {
            lying_source(&sc, addr, |s| {
                let hello = serde_json::json!({"Hello": {"strategy": "lazy"}});
                write_message(s, &hello);
                send_files(s, images.path());
                let elsewhere = serde_json::json!({"Strategy": {"Source": {"addr": decoy_addr}}});
                write_message(s, &elsewhere);
                // The destination's answer, then hang up.
                let _ = try_read_message(s);
            })
        },
    );
    let d = dst.expect_err("the destination refuses the address");
    assert_eq!(
        d.cause().transfer_kind(),
        Some(TransferKind::Protocol),
        "{d}"
    );
    assert!(
        matches!(decoy.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the address the source named"
    );
    assert!(is_empty(&dst_dir), "nothing left on the destination");
}
