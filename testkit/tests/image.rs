//! criu-image against CRIU's own decoder: checkpoints of real processes
//! (a shell pipeline; a multi-threaded process with TCP connections, queued
//! socket data, a pipe with data, a deleted open file, an eventfd, an epoll
//! and a memfd), every image decoded and rendered, and compared value for
//! value with `crit decode` and `crit decode --pretty`; `Checkpoint::inspect`
//! checked against what the test gave the process.
//!
//! crit runs from the CRIU source tree the set-up downloads
//! (`CRIU_SOURCE_DIR`, default /var/cache/criu-rs/src/criu-4.2.1) with
//! Debian's python3-protobuf (`CRIT_PYTHON`, default /usr/bin/python3).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criu::{Criu, ImagesDir, Options};
use criu_image::crit::{self, Style};
use criu_image::{Checkpoint, Image, Inspection};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn criu_source() -> PathBuf {
    std::env::var_os("CRIU_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/criu-rs/src/criu-4.2.1".into())
}

/// What `crit decode -i IMAGE` and `crit decode --pretty -i IMAGE` print
/// for each image named, from one Python process: crit's `decode` is
/// `pycriu.images.load(file, pretty, nopl=False)` then `json.dump`, and the
/// driver makes the same call (one interpreter instead of two per image
/// keeps the test fast).
const CRIT_DRIVER: &str = r#"
import json, sys
import pycriu
out = {}
for path in sys.argv[1:]:
    try:
        out[path] = [pycriu.images.load(open(path, "rb"), pretty, False) for pretty in (False, True)]
    except Exception as e:  # raw data ("Unknown magic"), or an empty file
        out[path] = {"error": repr(e)}
json.dump(out, sys.stdout)
"#;

fn crit_decode_all(images: &[PathBuf]) -> serde_json::Map<String, Value> {
    let python = std::env::var("CRIT_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let out = Command::new(&python)
        .current_dir(criu_source())
        .env("PYTHONPATH", "lib:crit")
        .arg("-c")
        .arg(CRIT_DRIVER)
        .args(images)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run crit with {python}: {e}; run scripts/setup.sh (CRIU source, python3-protobuf)")
        });
    assert!(
        out.status.success(),
        "crit failed: {} (run scripts/setup.sh: it builds crit's modules)",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("crit prints JSON") {
        Value::Object(map) => map,
        other => panic!("unexpected crit output {other}"),
    }
}

/// Decodes every image of `dir` (all but the raw `pages-*.img`), renders it
/// in both of crit's styles and compares with crit; an image both refuse
/// (raw data with no magic such as `ifaddr-*` or `route-*`, an empty file)
/// counts as agreement. Returns the magics seen.
fn assert_every_image_matches_crit(dir: &Path) -> BTreeSet<String> {
    let ck = Checkpoint::open(dir);
    let names: Vec<String> = ck
        .image_names()
        .unwrap()
        .into_iter()
        .filter(|n| !n.starts_with("pages-"))
        .collect();
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let crit = crit_decode_all(&paths);
    let mut magics = BTreeSet::new();
    let mut mismatches = Vec::new();
    for (name, path) in names.iter().zip(&paths) {
        let theirs = &crit[path.to_str().unwrap()];
        let image = match Image::open(path) {
            Ok(image) => image,
            Err(e) if theirs.get("error").is_some() => {
                eprintln!("{name}: both refuse it: ours {e}; crit {}", theirs["error"]);
                magics.insert("(refused by both)".into());
                continue;
            }
            Err(e) => panic!("{e}; crit says {theirs}"),
        };
        magics.insert(image.magic.to_string());
        for (i, style) in [Style::Plain, Style::Pretty].into_iter().enumerate() {
            let ours = crit::render(&image, style);
            if ours != theirs[i] {
                mismatches.push(format!(
                    "{name} ({style:?}):\n ours  {ours}\n crit  {}",
                    theirs[i]
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "differs from crit:\n{}",
        mismatches.join("\n")
    );
    eprintln!(
        "{}: {} images, {} kinds, all equal to crit: {magics:?}",
        dir.display(),
        names.len(),
        magics.len()
    );
    magics
}

/// A unique token per test process and call, for environments.
fn token(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Spawns `cmd` as a session leader holding only descriptors 0-2.
fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    criu_testkit::close_inherited_fds(&mut cmd);
    cmd.spawn().unwrap()
}

/// Polls `ready` until it holds, or fails after [`WAIT`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The command names of `pid`'s children, sorted.
fn children(pid: u32) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).ok())
            .map(|c| c.trim().to_string())
            .collect();
    names.sort();
    names
}

/// Once both children have exec'd (a fork not yet exec'd is still `sh`).
fn pipeline_ready(pid: u32) -> bool {
    children(pid) == ["cat", "sleep"]
}

/// Dumps `child`'s tree into `dir/img` (CRIU kills it), then reaps it.
fn dump(child: &mut Child, dir: &Path, customize: impl FnOnce(&mut Options<'_>)) -> PathBuf {
    let path = dir.join("img");
    let images = ImagesDir::create(&path).unwrap();
    let mut opts = Options::new();
    opts.pid(child.id() as i32)
        .images_dir(&images)
        .log_file("dump.log");
    customize(&mut opts);
    let result = Criu::new().dump(&mut opts);
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result.unwrap_or_else(|e| panic!("dump failed: {e}"));
    path
}

fn process<'a>(inspection: &'a Inspection, command: &str) -> &'a criu_image::ProcessView {
    inspection
        .processes
        .iter()
        .find(|p| p.command == command)
        .unwrap_or_else(|| panic!("no {command} in {:?}", inspection.processes))
}

#[test]
fn a_shell_pipeline_decodes_as_crit_does_and_inspect_shows_its_command_line() {
    let dir = tempfile::Builder::new()
        .prefix("criu-image-")
        .tempdir()
        .unwrap();
    let env = token("pipeline");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 | cat"])
        .env("CRIU_IMAGE_TEST", &env);
    let mut child = spawn(cmd);
    let pid = child.id();
    wait_until("the pipeline's two children", || pipeline_ready(pid));
    let images = dump(&mut child, dir.path(), |_| {});

    let magics = assert_every_image_matches_crit(&images);
    for m in [
        "PSTREE",
        "CORE",
        "MM",
        "PAGEMAP",
        "FDINFO",
        "FILES",
        "PIPES_DATA",
        "STATS",
    ] {
        assert!(magics.contains(m), "{m} image expected in {magics:?}");
    }
    let inspection = Checkpoint::open(&images).inspect().unwrap();
    assert_eq!(inspection.processes.len(), 3, "{:?}", inspection.processes);
    let sh = process(&inspection, "sh");
    assert_eq!((sh.pid, sh.ppid, sh.sid), (pid, 0, pid));
    assert_eq!(sh.argv, ["sh", "-c", "sleep 1000 | cat"]);
    assert!(sh.environment.contains(&format!("CRIU_IMAGE_TEST={env}")));
    let sleep = process(&inspection, "sleep");
    assert_eq!(sleep.argv, ["sleep", "1000"]);
    assert_eq!(sleep.ppid, pid);
    let cat = process(&inspection, "cat");
    let pipe_in = cat.files.iter().find(|f| f.fd == 0).expect("cat's stdin");
    assert_eq!(pipe_in.kind, "PIPE");
    assert!(
        sleep
            .files
            .iter()
            .any(|f| f.fd == 1 && f.path == pipe_in.path),
        "sleep writes into cat's pipe"
    );
    assert!(
        sh.memory.vmas > 0 && sh.memory.dumped_bytes > 0,
        "{:?}",
        sh.memory
    );
    assert!(sh.namespaces.contains_key("net"));
    let stats = inspection.stats.as_ref().expect("stats-dump");
    assert!(stats["pages_written"].as_u64().unwrap() > 0);
}

/// A process with two threads besides its main one, a loopback TCP
/// connection with unread data both ways and a listener (v4 and v6), a unix
/// datagram queue, an abstract unix name, a pipe holding data, a deleted
/// open file, an eventfd watched by an epoll, and a memfd.
const BUSY_PROCESS: &str = r#"
import os, select, socket, sys, tempfile, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
cli = socket.create_connection(srv.getsockname())
peer, _ = srv.accept()
cli.sendall(b"from the client, unread")
peer.sendall(b"from the server, unread")
v6 = socket.socket(socket.AF_INET6); v6.bind(("::1", 0)); v6.listen(1)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b"a queued datagram")
named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
named.bind(b"\0criu-image test=" + str(os.getpid()).encode())
r, w = os.pipe(); os.write(w, b"bytes left in a pipe")
fd, path = tempfile.mkstemp(dir=os.path.dirname(sys.argv[1])); os.write(fd, b"ghost"); os.unlink(path)
efd = os.eventfd(7)
ep = select.epoll(); ep.register(efd, select.EPOLLIN)
mfd = os.memfd_create("criu-image-memfd"); os.write(mfd, b"memfd data")
def spin():
    while True: time.sleep(0.05)
for _ in range(2): threading.Thread(target=spin, daemon=True).start()
with open(sys.argv[1], "w") as f: f.write(str(srv.getsockname()[1]))
while True: time.sleep(1)
"#;

#[test]
fn a_threaded_process_with_tcp_connections_decodes_as_crit_does() {
    let dir = tempfile::Builder::new()
        .prefix("criu-image-")
        .tempdir()
        .unwrap();
    let script = dir.path().join("busy.py");
    std::fs::write(&script, BUSY_PROCESS).unwrap();
    let ready = dir.path().join("ready");
    let env = token("busy");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script).arg(&ready).env("CRIU_IMAGE_TEST", &env);
    let mut child = spawn(cmd);
    let pid = child.id();
    wait_until("the process to be ready", || {
        std::fs::read_to_string(&ready).is_ok_and(|s| !s.is_empty())
    });
    let port: u32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let images = dump(&mut child, dir.path(), |o| {
        o.tcp_established(true);
    });

    let magics = assert_every_image_matches_crit(&images);
    for m in [
        "TCP_STREAM",
        "SK_QUEUES",
        "PIPES_DATA",
        "GHOST_FILE",
        "MEMFD_INODE",
    ] {
        assert!(magics.contains(m), "{m} image expected in {magics:?}");
    }
    let inspection = Checkpoint::open(&images).inspect().unwrap();
    assert_eq!(inspection.processes.len(), 1);
    let p = &inspection.processes[0];
    assert_eq!(p.pid, pid);
    assert_eq!(
        p.threads.len(),
        3,
        "main thread and two others: {:?}",
        p.threads
    );
    assert_eq!(p.argv[1], script.to_str().unwrap());
    assert!(p.environment.contains(&format!("CRIU_IMAGE_TEST={env}")));
    let tcp = |state: &str, local: &str| {
        p.sockets
            .iter()
            .any(|s| s.kind == "STREAM/TCP" && s.state == state && s.local.starts_with(local))
    };
    assert!(
        tcp("LISTEN", &format!("127.0.0.1:{port}")),
        "{:?}",
        p.sockets
    );
    assert!(tcp("LISTEN", "[::1]:"), "{:?}", p.sockets);
    assert!(
        p.sockets
            .iter()
            .any(|s| s.state == "ESTABLISHED" && s.remote == format!("127.0.0.1:{port}")),
        "the client's connection: {:?}",
        p.sockets
    );
    assert!(p
        .sockets
        .iter()
        .any(|s| s.family == "UNIX" && s.local.starts_with("@criu-image test=")));
    assert!(p
        .files
        .iter()
        .any(|f| f.path == script.to_str().unwrap() || f.kind == "REG"));
}

#[test]
fn every_truncation_of_a_real_image_is_an_error_with_an_offset_not_a_panic() {
    let dir = tempfile::Builder::new()
        .prefix("criu-image-")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 | cat"]);
    let mut child = spawn(cmd);
    let pid = child.id();
    wait_until("the pipeline's two children", || pipeline_ready(pid));
    let images = dump(&mut child, dir.path(), |_| {});
    let core = std::fs::read(images.join(format!("core-{pid}.img"))).unwrap();
    let mut errors = 0;
    for len in 0..core.len() {
        match Image::decode(&core[..len]) {
            // Only the bare header (two magics, no entry yet) is whole.
            Ok(image) => assert_eq!((len, image.entries.len()), (8, 0)),
            Err(e) => {
                assert!(e.offset <= len as u64, "{e} at a cut of {len}");
                errors += 1;
            }
        }
    }
    assert!(
        errors > core.len() / 2,
        "most cuts are errors ({errors}/{})",
        core.len()
    );
    let err = Image::open(images.join("pages-1.img")).unwrap_err();
    assert!(err.to_string().contains("pages-1.img at offset 0"), "{err}");
}

/// SysV IPC objects with contents (CRIU dumps them with the IPC namespace,
/// each followed by its raw payload): a shared memory segment holding
/// text, a set of three semaphores with values, a queue with two messages.
const SYSV_IPC: &str = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_PRIVATE, IPC_CREAT, SETVAL = 0, 0o1000, 16
shm = libc.shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0o600)
addr = libc.shmat(shm, None, 0)
ctypes.memmove(addr, b"shared memory text", 18)
libc.shmdt(ctypes.c_void_p(addr))
sem = libc.semget(IPC_PRIVATE, 3, IPC_CREAT | 0o600)
for i, v in enumerate((3, 1, 4)):
    assert libc.semctl(sem, i, SETVAL, v) == 0
q = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
for kind, text in ((1, b"first message"), (2, b"second, longer message")):
    buf = ctypes.create_string_buffer(8 + len(text))
    ctypes.c_long.from_buffer(buf).value = kind
    ctypes.memmove(ctypes.addressof(buf) + 8, text, len(text))
    assert libc.msgsnd(q, buf, len(text), 0) == 0
assert min(shm, sem, q) >= 0
"#;

#[test]
fn a_busybox_container_decodes_as_crit_does() {
    use criu_testkit::container::{make_rootfs, wait_lines, OwnContainer};
    let dir = tempfile::Builder::new()
        .prefix("criu-image-")
        .tempdir()
        .unwrap();
    let (rootfs, logdir) = (dir.path().join("rootfs"), dir.path().join("log"));
    make_rootfs(&rootfs).unwrap();
    std::fs::create_dir_all(&logdir).unwrap();
    let mut c = OwnContainer::start(dir.path(), &rootfs, &logdir, "0.05").unwrap();
    wait_lines(&logdir.join("counter.log"), 2, WAIT).unwrap();
    let made = Command::new("nsenter")
        .arg(format!("--ipc=/proc/{}/ns/ipc", c.init))
        .args(["/usr/bin/python3", "-c", SYSV_IPC])
        .status()
        .unwrap();
    assert!(
        made.success(),
        "SysV IPC objects in the container's namespace"
    );
    let path = dir.path().join("img");
    let images = ImagesDir::create(&path).unwrap();
    let dumped = Criu::new().dump(
        Options::new()
            .pid(c.init)
            .images_dir(&images)
            .log_file("dump.log")
            .add_ext_mount("/log", "logdir"),
    );
    let _ = c.unshare.wait();
    dumped.unwrap_or_else(|e| panic!("dump failed: {e}"));

    let magics = assert_every_image_matches_crit(&path);
    for m in [
        "MNTS",
        "UTSNS",
        "IPC_VAR",
        "IPCNS_SHM",
        "IPCNS_SEM",
        "IPCNS_MSG",
        "NETDEV",
        "NETNS",
    ] {
        assert!(magics.contains(m), "{m} image expected in {magics:?}");
    }
    let inspection = Checkpoint::open(&path).inspect().unwrap();
    let init = &inspection.processes[0];
    assert_eq!(
        (init.pid, init.ppid),
        (1, 0),
        "the container's init: {init:?}"
    );
    assert_eq!(init.command, "sh");
    assert!(
        init.argv.iter().any(|a| a.contains("expr $i + 1")),
        "{:?}",
        init.argv
    );
    assert!(
        inspection
            .mounts
            .iter()
            .any(|m| m.mountpoint == "/proc" && m.fstype == "proc"),
        "{:?}",
        inspection.mounts
    );
}
