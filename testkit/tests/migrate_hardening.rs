//! Migration over other streams than TCP, and the migration's hardening:
//! what a receiver removes, limits, pidfds, the end-of-migration protocol.
//! Real CRIU, real processes. Needs root.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use criu::migrate::{self, DestConfig, SourceConfig, Strategy};
use criu::Criu;
use criu_testkit::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// Both sides' results of one migration.
struct Run {
    src: criu::Result<migrate::SourceReport>,
    dst: criu::Result<migrate::DestReport>,
}

/// Migrates `pid` over a connected unix socket pair, on this host; `src`
/// and `dst` build the two sides' settings (on their own threads: the
/// settings are not `Send`).
fn migrate_over_unix<'a>(
    pid: i32,
    src: impl FnOnce() -> SourceConfig<'a>,
    dst: impl FnOnce() -> DestConfig<'a> + Send,
) -> Run {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let dst_side = s.spawn(move || migrate::receive(&Criu::new(), &mut b, dst()));
        let src = migrate::send(&Criu::new(), pid, &mut a, src());
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
        let (s, d) = (self.dir.path().join("src"), self.dir.path().join("dst"));
        migrate_over_unix(self.w.pid(), || src(s), || dst(d))
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
        |s| SourceConfig::new(Strategy::StopAndCopy, s),
        DestConfig::new,
    );
    sc.assert_moved(run);
}

#[test]
fn page_server_over_a_unix_socket_with_named_addresses() {
    let mut sc = Scene::new();
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let run = sc.migrate(
        |s| SourceConfig::new(Strategy::PageServer, s).criu_addresses(lo, lo),
        |d| DestConfig::new(d).criu_address(lo),
    );
    sc.assert_moved(run);
}

#[test]
fn page_server_over_a_unix_socket_without_addresses_is_refused_plainly() {
    let mut sc = Scene::new();
    let page_server = |s| SourceConfig::new(Strategy::PageServer, s);
    let Run { src, dst } = sc.migrate(page_server, DestConfig::new);
    let e = dst.expect_err("the destination has no address for its page server");
    assert!(e.to_string().contains("criu_address"), "{e}");
    let e = src.expect_err("the source fails too");
    assert!(e.to_string().contains("criu_addresses"), "{e}");
    assert!(
        sc.w.is_running() && sc.w.advances(WAIT),
        "the source runs on"
    );
}
