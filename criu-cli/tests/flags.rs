//! The CRIU flags `dump` and `restore` share take effect: each test dumps
//! (and, where the flag is the restore's, restores) a real process with
//! and without one and sees the difference (CRIU's refusal and the hint
//! naming the flag, a tree left running or not, a longer log, a deadline
//! that fires, what CRIU's debug log says it did: the network lock it
//! used, the cgroup properties it saved; the root and the mounts a
//! restored mount namespace got). Covered: --tcp-established,
//! --file-locks, --leave-running, --log-level, --criu-config, --deadline,
//! --network-lock, --ext-unix-sk, --external, --shell-job,
//! --manage-cgroups, --tcp-close, --link-remap, --evasive-devices,
//! --root, --ext-mount-map, --auto-ext-mnt; --weak-sysctls only as far
//! as CRIU's dump and restore receiving it (see its test). Needs root.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, scopeguard};

/// A Python workload, session leader, killed and reaped by pid on drop.
struct Workload(Child);

impl Workload {
    fn start(dir: &Path, script: &str) -> Workload {
        let py = dir.join("w.py");
        std::fs::write(&py, script).unwrap();
        let ready = dir.join("ready");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&py)
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        common::clean_start(&mut cmd, true);
        let w = Workload(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the workload never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Running (not stopped, not a zombie, not gone).
    fn runs(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()));
        stat.ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['S', 'R'])))
            .unwrap_or(false)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dump(w: &Workload, dir: &Path, flags: &[&str]) -> Output {
    Command::new(bin())
        .args(["dump", "--pid", &w.pid(), "--images-dir"])
        .arg(dir)
        .args(flags)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const TCP: &str = r#"
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

const LOCK: &str = r#"
import fcntl, sys, time
f = open(sys.argv[1] + ".lock", "w"); fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

const IDLE: &str = r#"
import sys, time
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

#[test]
fn tcp_established_is_needed_to_dump_a_connection_and_the_hint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused)
        .contains("hint: the tree has established TCP connections: add --tcp-established"));
    assert!(w.runs(), "a refused dump left the tree stopped");
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--tcp-established"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(w.runs());
}

#[test]
fn file_locks_is_needed_to_dump_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), LOCK);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--file-locks"),
        "{}",
        stderr(&refused)
    );
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--file-locks"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn leave_running_keeps_the_tree_and_its_absence_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    let kept = dump(&w, &dir.path().join("a"), &["--leave-running", "--json"]);
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert!(w.runs(), "--leave-running stopped the tree");
    let gone = dump(&w, &dir.path().join("b"), &[]);
    assert!(gone.status.success(), "{}", stderr(&gone));
    assert!(
        !w.runs(),
        "the tree runs on after a dump without --leave-running"
    );
    // --leave-running means nothing to restore: refused with a hint.
    let r = Command::new(bin())
        .args(["restore", "--images-dir"])
        .arg(dir.path().join("b"))
        .arg("--leave-running")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("--leave-running applies to dump"));
}

#[test]
fn log_level_and_a_criu_config_file_reach_criu() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    // The config file carries what the flags do not: tcp-established here,
    // which the dump of a connection needs.
    let config = dir.path().join("criu.conf");
    std::fs::write(&config, "tcp-established\n").unwrap();
    let quiet = dump(
        &w,
        &dir.path().join("a"),
        &["--leave-running", "--criu-config", config.to_str().unwrap()],
    );
    assert!(
        quiet.status.success(),
        "the config file's tcp-established did not apply: {}",
        stderr(&quiet)
    );
    let loud = dump(
        &w,
        &dir.path().join("b"),
        &[
            "--leave-running",
            "--tcp-established",
            "--log-level",
            "debug",
        ],
    );
    assert!(loud.status.success(), "{}", stderr(&loud));
    let lines = |d: &str| {
        std::fs::read_to_string(dir.path().join(d).join("dump.log"))
            .unwrap()
            .lines()
            .count()
    };
    assert!(
        lines("b") > 10 * lines("a").max(1),
        "debug log {} lines, default {}",
        lines("b"),
        lines("a")
    );
    let missing = dump(
        &w,
        &dir.path().join("c"),
        &["--criu-config", "/nonexistent/criu.conf"],
    );
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn a_deadline_that_passes_fails_the_dump_and_leaves_the_tree_running() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    let late = dump(&w, &dir.path().join("a"), &["--deadline", "1ms"]);
    assert_eq!(late.status.code(), Some(3), "{}", stderr(&late));
    assert!(stderr(&late).contains("deadline"), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("hint: raise --deadline"),
        "{}",
        stderr(&late)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.runs() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(w.runs(), "the interrupted dump left the tree stopped");
}

/// The debug log of a dump into `dir` (`dump.log`).
fn dump_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
}

#[test]
fn network_lock_chooses_how_criu_locks_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let base = [
        "--leave-running",
        "--tcp-established",
        "--log-level",
        "debug",
    ];
    let with = |name: &str, method: &str| {
        let images = dir.path().join(name);
        let out = dump(
            &w,
            &images,
            &[&base[..], &["--network-lock", method]].concat(),
        );
        (out, dump_log(&images))
    };
    let (ipt, ipt_log) = with("iptables", "iptables");
    assert!(ipt.status.success(), "{}", stderr(&ipt));
    assert!(ipt_log.contains("Running iptables"), "iptables: {ipt_log}");
    let (skip, skip_log) = with("skip", "skip");
    assert!(skip.status.success(), "{}", stderr(&skip));
    assert!(
        !skip_log.contains("Running iptables") && !skip_log.contains("Running nftables"),
        "skip still locked: {skip_log}"
    );
    // nftables: CRIU locks through libnftables (or says it was built
    // without it); either way not with iptables.
    let (_, nft_log) = with("nftables", "nftables");
    assert!(nft_log.contains("nftables"), "nftables: {nft_log}");
    assert!(!nft_log.contains("Running iptables"), "nftables: {nft_log}");
    assert!(w.runs());
}

/// A dgram socket connected to `READY.sock` (bound by the test, outside
/// the tree); writes its own inode to READY.
const UNIX_PEER: &str = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(sys.argv[1] + ".sock")
ino = os.fstat(s.fileno()).st_ino
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(ino))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True: time.sleep(1)
"#;

#[test]
fn ext_unix_sk_and_external_unix_let_a_socket_to_outside_be_dumped() {
    let dir = tempfile::tempdir().unwrap();
    let _peer = std::os::unix::net::UnixDatagram::bind(dir.path().join("ready.sock")).unwrap();
    let w = Workload::start(dir.path(), UNIX_PEER);
    let ino = std::fs::read_to_string(dir.path().join("ready")).unwrap();
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--ext-unix-sk"),
        "{}",
        stderr(&refused)
    );
    let ext = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--ext-unix-sk"],
    );
    assert!(ext.status.success(), "--ext-unix-sk: {}", stderr(&ext));
    // --external unix[INODE]: this one socket only.
    let spec = format!("unix[{}]", ino.trim());
    let one = dump(
        &w,
        &dir.path().join("c"),
        &["--leave-running", "--external", &spec],
    );
    assert!(one.status.success(), "--external {spec}: {}", stderr(&one));
    let other = dump(
        &w,
        &dir.path().join("d"),
        &["--leave-running", "--external", "unix[1]"],
    );
    assert_eq!(other.status.code(), Some(3), "{}", stderr(&other));
    assert!(w.runs());
}

/// Writes its pid to READY; started under a shell that is its session
/// leader (`shell_job_workload`), like a job of an interactive shell.
const OWN_PID: &str = r#"
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True: time.sleep(1)
"#;

#[test]
fn shell_job_dumps_a_tree_whose_session_leader_is_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("w.py");
    std::fs::write(&py, OWN_PID).unwrap();
    let ready = dir.path().join("ready");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "/usr/bin/python3 \"$0\" \"$1\" & wait"])
        .arg(&py)
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::clean_start(&mut cmd, true);
    let shell = common::Killed(cmd.spawn().unwrap());
    assert!(
        common::holds_within(Duration::from_secs(10), || ready.exists()),
        "the job never started"
    );
    let pid = std::fs::read_to_string(&ready).unwrap();
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: kill(2) of the job this test started (its shell is reaped
    // by `shell`).
    let _job = scopeguard(move || unsafe {
        libc::kill(pid, libc::SIGKILL);
    });
    let dump_job = |name: &str, flags: &[&str]| {
        Command::new(bin())
            .args(["dump", "--pid", &pid.to_string(), "--leave-running"])
            .arg("--images-dir")
            .arg(dir.path().join(name))
            .args(flags)
            .output()
            .unwrap()
    };
    let refused = dump_job("a", &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("shell-job"),
        "{}",
        stderr(&refused)
    );
    let ok = dump_job("b", &["--shell-job"]);
    assert!(ok.status.success(), "--shell-job: {}", stderr(&ok));
    assert_eq!(common::state(pid).map(|s| s == 'T'), Some(false));
    drop(shell);
}

/// A cgroup of the v1 `cpu` hierarchy of this test's own, removed on drop
/// (once its tasks are gone).
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = Path::new("/sys/fs/cgroup/cpu")
            .join(format!("criu-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).expect("making a cpu cgroup (cgroup v1, as set up here)");
        Cgroup(dir)
    }

    fn add(&self, pid: &str) {
        std::fs::write(self.0.join("cgroup.procs"), pid).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn manage_cgroups_decides_whether_criu_dumps_cgroup_properties() {
    // A tree in a cgroup of its own (in CRIU's cgroups there is nothing to
    // dump): CRIU's log has a "Dumping value" line per property it saves,
    // with `full`, and none with `ignore`.
    let cg = Cgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    cg.add(&w.pid());
    let props = |mode: &str| {
        let images = dir.path().join(mode);
        let out = dump(
            &w,
            &images,
            &[
                "--leave-running",
                "--log-level",
                "debug",
                "--manage-cgroups",
                mode,
            ],
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        dump_log(&images).matches("Dumping value").count()
    };
    let full = props("full");
    let ignore = props("ignore");
    assert!(full > 0, "--manage-cgroups full dumped no cgroup property");
    assert_eq!(
        ignore, 0,
        "--manage-cgroups ignore dumped cgroup properties"
    );
    assert!(w.runs());
    drop(w);
    drop(cg);
}

#[test]
fn tcp_close_dumps_a_connection_without_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), TCP);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let closed = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--tcp-close"],
    );
    assert!(closed.status.success(), "--tcp-close: {}", stderr(&closed));
    assert!(w.runs());
}

/// Holds open a file whose name is gone while another link to it stays
/// (so CRIU cannot ghost-copy it: it must link-remap it).
const LINKED_AWAY: &str = r#"
import os, sys, time
a, b = sys.argv[1] + ".a", sys.argv[1] + ".b"
f = open(a, "w"); f.write("x")
f.flush()
os.link(a, b); os.unlink(a)
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

#[test]
fn link_remap_is_needed_for_a_file_open_under_a_removed_name() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), LINKED_AWAY);
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("link-remap"),
        "{}",
        stderr(&refused)
    );
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--link-remap"],
    );
    assert!(ok.status.success(), "--link-remap: {}", stderr(&ok));
    assert!(w.runs());
}

/// Opens a device node of its own (`READY.dev`, like /dev/null: char
/// 1:3).
const DEVICE_NODE: &str = r#"
import os, stat, sys, time
dev = sys.argv[1] + ".dev"
os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
f = open(dev, "w")
open(sys.argv[1], "w").close()
while True: time.sleep(1)
"#;

#[test]
fn evasive_devices_dumps_a_device_whose_name_leads_to_a_like_node() {
    // CRIU's dump checks that an open file's name still leads to the
    // file; for a device, --evasive-devices accepts another node of the
    // same device there ("Unaccessible path opened" without it). The
    // other node: /dev/null, bind-mounted over the name (as a device
    // manager recreating its nodes would leave it).
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), DEVICE_NODE);
    let node = std::ffi::CString::new(dir.path().join("ready.dev").to_str().unwrap()).unwrap();
    // SAFETY: mount(2) with NUL-terminated paths; undone by the guard.
    let bound = unsafe {
        libc::mount(
            c"/dev/null".as_ptr(),
            node.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        bound,
        0,
        "bind-mounting /dev/null: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: umount2(2) of the mount made above.
    let _unbind = scopeguard(move || unsafe {
        libc::umount2(node.as_ptr(), libc::MNT_DETACH);
    });
    let refused = dump(&w, &dir.path().join("a"), &["--leave-running"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--evasive-devices"),
        "{}",
        stderr(&refused)
    );
    assert!(w.runs(), "a refused dump left the tree stopped");
    let ok = dump(
        &w,
        &dir.path().join("b"),
        &["--leave-running", "--evasive-devices"],
    );
    assert!(ok.status.success(), "--evasive-devices: {}", stderr(&ok));
    assert!(w.runs());
}

/// `--weak-sysctls` only reaches CRIU here: it lets a restore skip the
/// network namespace's sysctls the kernel lacks, and this kernel has
/// every one CRIU saves (a tmpfs over /proc/sys/net/unix does not hide
/// it from a new network namespace: each has its own dentries), so no
/// restore here differs with it. What the test can show is that CRIU
/// got it, on dump and on restore, where it acts: at log level info CRIU
/// says "Will skip non-existent sysctls on restore" when (and only when)
/// it is set.
#[test]
fn weak_sysctls_reaches_criu_on_dump_and_restore() {
    const SAID: &str = "Will skip non-existent sysctls on restore";
    let info = ["--log-level", "info"];
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::start(dir.path(), IDLE);
    let pid: i32 = w.pid().parse().unwrap();
    let dumped = |name: &str, flags: &[&str]| {
        let images = dir.path().join(name);
        let out = dump(
            &w,
            &images,
            &[&info[..], &["--leave-running"], flags].concat(),
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        (dump_log(&images).contains(SAID), images)
    };
    let (weak, weak_images) = dumped("weak", &["--weak-sysctls"]);
    assert!(weak, "CRIU's dump never got --weak-sysctls");
    let (strict, strict_images) = dumped("strict", &[]);
    assert!(!strict, "CRIU's dump skips missing sysctls unasked");
    assert!(w.runs());
    drop(w);
    let restored = |images: &Path, flags: &[&str]| {
        let (out, tree) = restore(images, pid, &[&info[..], flags].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        drop(tree);
        let freed = common::holds_within(Duration::from_secs(20), || common::state(pid).is_none());
        assert!(freed, "the restored pid {pid} is still taken");
        let log = std::fs::read_to_string(images.join("restore.log")).unwrap_or_default();
        log.contains(SAID)
    };
    assert!(
        !restored(&strict_images, &[]),
        "CRIU's restore skips missing sysctls unasked"
    );
    assert!(
        restored(&weak_images, &["--weak-sysctls"]),
        "CRIU's restore never got --weak-sysctls"
    );
}

/// Started by `unshare --mount` in a mount namespace of its own: binds
/// the root directory $1 onto itself, binds $2 (if given) from outside
/// onto $1/data, pivots into $1 and drops the old root, then sleeps in
/// busybox with its stdio on files of the new root.
const PIVOT: &str = r#"set -e
mount --bind "$1" "$1"
[ -z "$2" ] || mount --bind "$2" "$1/data"
cd "$1"
pivot_root . old
exec /bin/busybox sh -c 'umount -l /old && exec /bin/busybox sleep 1000000 </marker >>/log 2>&1'
"#;

/// A root directory for [`MountNsTree`] under `dir/name`: a static
/// busybox, the files the tree's stdio uses, and the mountpoints.
fn rootfs(dir: &Path, name: &str) -> std::path::PathBuf {
    let root = dir.join(name);
    for d in ["bin", "old", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox"))
        .expect("copying /usr/bin/busybox (busybox-static, as set up here)");
    std::fs::write(root.join("marker"), "the same in every root\n").unwrap();
    std::fs::write(root.join("log"), "").unwrap();
    root
}

/// A one-process tree in a mount namespace of its own, whose root is a
/// directory of the test (and, with `data`, a bind mount from outside at
/// /data). Killed and reaped on drop.
struct MountNsTree(Child);

impl MountNsTree {
    fn start(root: &Path, data: Option<&Path>) -> MountNsTree {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--"])
            .args(["/bin/sh", "-c", PIVOT, "sh"])
            .arg(root)
            .arg(data.map_or(Path::new(""), |d| d))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        common::clean_start(&mut cmd, true);
        let t = MountNsTree(cmd.spawn().unwrap());
        let cmdline = format!("/proc/{}/cmdline", t.pid());
        let asleep = common::holds_within(Duration::from_secs(10), || {
            std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"/bin/busybox\0sleep\0"))
        });
        assert!(asleep, "the tree never pivoted into {}", root.display());
        t
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits for the tree a dump stopped (killed) to be gone, so that its
    /// pid is free for the restore.
    fn reap(&mut self) {
        let status = self.0.wait().unwrap();
        assert!(!status.success(), "the tree ended by itself: {status}");
    }
}

impl Drop for MountNsTree {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dump_pid(pid: i32, images: &Path, flags: &[&str]) -> Output {
    Command::new(bin())
        .args(["dump", "--pid", &pid.to_string(), "--images-dir"])
        .arg(images)
        .args(flags)
        .output()
        .unwrap()
}

/// `criu-rs restore` of `images` with `flags`; on success the restored
/// pid (the tree is detached: killed by pid by the guard, then reaped by
/// init), and on failure once the half-restored pid is gone (init reaps
/// it, slowly here), so that a next restore finds it free.
fn restore(images: &Path, pid: i32, flags: &[&str]) -> (Output, Option<impl Drop>) {
    let out = Command::new(bin())
        .args(["restore", "--images-dir"])
        .arg(images)
        .args(flags)
        .output()
        .unwrap();
    if !out.status.success() {
        let freed = common::holds_within(Duration::from_secs(20), || common::state(pid).is_none());
        assert!(freed, "pid {pid} of a failed restore is still taken");
        return (out, None);
    }
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(restored, pid, "CRIU restores the pid the tree had");
    // SAFETY: kill(2) of the tree this test restored, on drop.
    let guard = scopeguard(move || unsafe {
        libc::kill(restored, libc::SIGKILL);
    });
    (out, Some(guard))
}

/// `(st_dev, st_ino)` of `path`.
fn identity(path: impl AsRef<Path>) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()));
    (m.dev(), m.ino())
}

#[test]
fn root_gives_a_restored_mount_namespace_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (rootfs(dir.path(), "first"), rootfs(dir.path(), "second"));
    let mut t = MountNsTree::start(&first, None);
    let pid = t.pid();
    assert_eq!(identity(format!("/proc/{pid}/root")), identity(&first));
    let images = dir.path().join("images");
    let dumped = dump_pid(pid, &images, &[]);
    assert!(dumped.status.success(), "{}", stderr(&dumped));
    t.reap();
    // Refused before CRIU runs (CRIU 4.2 crashes on it), naming --root.
    let (rootless, _) = restore(&images, pid, &[]);
    assert_eq!(rootless.status.code(), Some(2), "{}", stderr(&rootless));
    assert!(
        stderr(&rootless).contains("hint: pass --root DIR"),
        "{}",
        stderr(&rootless)
    );
    let (ok, _tree) = restore(&images, pid, &["--root", second.to_str().unwrap()]);
    assert!(ok.status.success(), "--root: {}", stderr(&ok));
    assert_eq!(
        identity(format!("/proc/{pid}/root")),
        identity(&second),
        "the restored tree's root is not --root's directory"
    );
}

#[test]
fn ext_mount_map_names_a_bind_mount_from_outside_and_where_it_comes_back_from() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (rootfs(dir.path(), "first"), rootfs(dir.path(), "second"));
    let (data, data2) = (dir.path().join("data"), dir.path().join("data2"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&data2).unwrap();
    let mut t = MountNsTree::start(&first, Some(&data));
    let pid = t.pid();
    let refused = dump_pid(pid, &dir.path().join("a"), &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("hint: the tree has a bind mount from outside"));
    assert_eq!(
        common::state(pid),
        Some('S'),
        "a refused dump left the tree stopped"
    );
    let images = dir.path().join("b");
    let dumped = dump_pid(pid, &images, &["--ext-mount-map", "/data:data"]);
    assert!(
        dumped.status.success(),
        "--ext-mount-map: {}",
        stderr(&dumped)
    );
    t.reap();
    let root = ["--root", second.to_str().unwrap()];
    let (unmapped, _) = restore(&images, pid, &root);
    assert_eq!(unmapped.status.code(), Some(3), "{}", stderr(&unmapped));
    assert!(
        stderr(&unmapped).contains("--ext-mount-map KEY:DIR"),
        "{}",
        stderr(&unmapped)
    );
    let map = format!("data:{}", data2.display());
    let (ok, _tree) = restore(
        &images,
        pid,
        &[&root[..], &["--ext-mount-map", &map]].concat(),
    );
    assert!(
        ok.status.success(),
        "--ext-mount-map {map}: {}",
        stderr(&ok)
    );
    assert_eq!(identity(format!("/proc/{pid}/root/data")), identity(&data2));
}

#[test]
fn auto_ext_mnt_finds_a_bind_mount_from_outside_on_dump_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (rootfs(dir.path(), "first"), rootfs(dir.path(), "second"));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut t = MountNsTree::start(&first, Some(&data));
    let pid = t.pid();
    let refused = dump_pid(pid, &dir.path().join("a"), &[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let images = dir.path().join("b");
    let dumped = dump_pid(pid, &images, &["--auto-ext-mnt"]);
    assert!(
        dumped.status.success(),
        "--auto-ext-mnt: {}",
        stderr(&dumped)
    );
    t.reap();
    let root = ["--root", second.to_str().unwrap()];
    let (without, _) = restore(&images, pid, &root);
    assert_eq!(without.status.code(), Some(3), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("restore with --auto-ext-mnt"),
        "{}",
        stderr(&without)
    );
    let (ok, _tree) = restore(&images, pid, &[&root[..], &["--auto-ext-mnt"]].concat());
    assert!(ok.status.success(), "--auto-ext-mnt: {}", stderr(&ok));
    // Found again where the dump found it: the host's own directory.
    assert_eq!(identity(format!("/proc/{pid}/root/data")), identity(&data));
}
