//! `criu-rs decode`, `encode`, `info` and `x` against CRIU's own crit, on
//! every image of real checkpoints made by `criu-rs dump` here: a shell, a
//! process holding files, sockets, pipes (with data in them), an unlinked
//! file, a TCP connection, file locks, shared memory and more, and a
//! multi-process tree.
//!
//! For each image: `criu-rs decode` prints the bytes `crit decode` prints
//! (plain and `--pretty`); crit's JSON (both styles) encoded by
//! `criu-rs encode` is byte for byte what `crit encode` writes from it;
//! `show` (and `show --nopl`) print what crit's do; `info` agrees on the
//! images crit counts right. For each checkpoint,
//! `x ps|fds|mems|rss` prints what `crit x` prints.
//!
//! crit runs from the CRIU source tree the set-up downloads
//! (`CRIU_SOURCE_DIR`, default /var/cache/criu-rs/src/criu-4.2.1) with
//! Debian's python3 (`CRIT_PYTHON`); without it the test fails and says
//! to run scripts/setup.sh. Needs root (CRIU).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use common::{bin, run};

fn criu_source() -> PathBuf {
    std::env::var_os("CRIU_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/criu-rs/src/criu-4.2.1".into())
}

fn python() -> String {
    std::env::var("CRIT_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// A workload, a session leader (as CRIU needs under session 0), killed
/// and reaped by pid on drop.
struct Workload(Child);

impl Workload {
    fn start(argv: &[&str], ready: &Path) -> Workload {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        common::clean_start(&mut cmd, true);
        let w = Workload(cmd.spawn().expect("starting a workload"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "workload {argv:?} never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // The whole session: the workload's children too (by process group,
        // which setsid made its pid).
        // SAFETY: kill(2) with a negative pid signals that process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Dumps `w`'s tree with the CLI, leaving it running.
fn dump(w: &Workload, dir: &Path, extra: &[&str]) {
    run(Command::new(bin())
        .args(["dump", "--pid", &w.pid().to_string(), "--images-dir"])
        .arg(dir)
        .arg("--leave-running")
        .args(extra));
}

const FILES_AND_SOCKETS: &str = r#"
import fcntl, mmap, os, socket, sys, time
d = sys.argv[1]
keep = []
f = open(os.path.join(d, "data.txt"), "w+"); f.write("hello\n"); f.flush(); keep.append(f)
fcntl.flock(f, fcntl.LOCK_EX)
g = open(os.path.join(d, "gone.txt"), "w+"); g.write("unlinked but open\n"); g.flush(); keep.append(g)
os.unlink(os.path.join(d, "gone.txt"))
r, w = os.pipe(); os.write(w, b"in the pipe"); keep += [r, w]
a, b = socket.socketpair(); a.send(b"queued on a unix socket"); keep += [a, b]
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); u.bind(os.path.join(d, "dgram.sock")); keep.append(u)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
cli.send(b"unread bytes"); keep += [srv, cli, peer]
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::1", 0)); keep.append(udp)
e = os.eventfd(7); keep.append(e)
ep = __import__("select").epoll(); ep.register(r); keep.append(ep)
m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED); m[:5] = b"share"; keep.append(m)
fm = mmap.mmap(f.fileno(), 0); keep.append(fm)
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(0); libc.inotify_add_watch(ino, d.encode(), 0x100); keep.append(ino)
tfd = libc.timerfd_create(1, 0); keep.append(tfd)
mask = (ctypes.c_ulong * 16)(); mask[0] = 1 << (signal.SIGUSR1 - 1)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
sfd = libc.signalfd(-1, ctypes.byref(mask), 8, 0); keep.append(sfd)
buf = bytearray(4 << 20)
for i in range(0, len(buf), 4096): buf[i] = 1
os.chdir(d)
open(os.path.join(d, "ready"), "w").close()
while True: time.sleep(1)
"#;

const TREE: &str = r#"
import os, sys, time
d = sys.argv[1]
for i in range(3):
    if os.fork() == 0:
        if i == 0 and os.fork() == 0:
            while True: time.sleep(1)
        while True: time.sleep(1)
time.sleep(0.2)
open(os.path.join(d, "ready"), "w").close()
while True: time.sleep(1)
"#;

/// The three checkpoints: (name, images directory).
fn checkpoints(root: &Path) -> Vec<(&'static str, PathBuf, Workload)> {
    let mut out = Vec::new();

    let shell_dir = root.join("shell");
    std::fs::create_dir(&shell_dir).unwrap();
    let ready = shell_dir.join("ready");
    // A shell alone (builtins only), reading a FIFO it holds open.
    let script = format!(
        "cd {}; mkfifo f; exec 3<>f; echo queued >&3; : > {}; while :; do read -t 1 -u 3 x; done",
        shell_dir.display(),
        ready.display()
    );
    let shell = Workload::start(&["/bin/bash", "-c", &script], &ready);
    dump(&shell, &shell_dir.join("img"), &[]);
    out.push(("shell", shell_dir.join("img"), shell));

    let files_dir = root.join("files");
    std::fs::create_dir(&files_dir).unwrap();
    let py = files_dir.join("w.py");
    std::fs::write(&py, FILES_AND_SOCKETS).unwrap();
    let files = Workload::start(
        &[
            "/usr/bin/python3",
            py.to_str().unwrap(),
            files_dir.to_str().unwrap(),
        ],
        &files_dir.join("ready"),
    );
    dump(
        &files,
        &files_dir.join("img"),
        &[
            "--tcp-established",
            "--file-locks",
            "--ext-unix-sk",
            "--link-remap",
        ],
    );
    out.push(("files", files_dir.join("img"), files));

    let tree_dir = root.join("tree");
    std::fs::create_dir(&tree_dir).unwrap();
    let py = tree_dir.join("t.py");
    std::fs::write(&py, TREE).unwrap();
    let tree = Workload::start(
        &[
            "/usr/bin/python3",
            py.to_str().unwrap(),
            tree_dir.to_str().unwrap(),
        ],
        &tree_dir.join("ready"),
    );
    dump(&tree, &tree_dir.join("img"), &[]);
    out.push(("tree", tree_dir.join("img"), tree));
    out
}

/// For each image: crit's decode (both styles, as text), its encode of
/// each, and its info; or the error crit raised.
const CRIT_DRIVER: &str = r#"
import base64, io, json, sys
import pycriu
out = {}
for path in sys.argv[1:]:
    r = {}
    try:
        for pretty in (False, True):
            img = pycriu.images.load(open(path, "rb"), pretty, False)
            text = json.dumps(img, indent=4 if pretty else None) + "\n"
            r["pretty" if pretty else "plain"] = text
            try:
                f = io.BytesIO()
                pycriu.images.dump(json.loads(text), f)
                r["enc_pretty" if pretty else "enc_plain"] = base64.b64encode(f.getvalue()).decode()
            except Exception as e:
                r["enc_error"] = repr(e)
        try:
            r["nopl"] = json.dumps(pycriu.images.load(open(path, "rb"), True, True), indent=4) + "\n"
        except Exception as e:
            r["nopl_error"] = repr(e)
        try:
            r["info"] = json.dumps(pycriu.images.info(open(path, "rb")), indent=4) + "\n"
        except Exception as e:
            r["info_error"] = repr(e)
    except Exception as e:
        r = {"error": repr(e)}
    out[path] = r
json.dump(out, sys.stdout)
"#;

fn crit_all(images: &[PathBuf]) -> serde_json::Map<String, Value> {
    let out = Command::new(python())
        .current_dir(criu_source())
        .env("PYTHONPATH", "lib:crit")
        .arg("-c")
        .arg(CRIT_DRIVER)
        .args(images)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run crit with {}: {e}; run scripts/setup.sh",
                python()
            )
        });
    assert!(
        out.status.success(),
        "crit failed: {} (run scripts/setup.sh: it builds crit's modules)",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("the driver prints JSON") {
        Value::Object(map) => map,
        other => panic!("unexpected driver output {other}"),
    }
}

fn ours(args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running criu-rs");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Compares one checkpoint's images; returns the counts compared.
fn compare_images(dir: &Path, tally: &mut BTreeMap<&'static str, usize>, diffs: &mut Vec<String>) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    paths.sort();
    let crit = crit_all(&paths);
    let b64 = base64::engine::general_purpose::STANDARD;
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let theirs = &crit[path.to_str().unwrap()];
        let p = path.to_str().unwrap();
        if theirs.get("error").is_some() {
            // Raw data (pages-*.img) or an image crit cannot read: ours must
            // refuse it too.
            if ours(&["decode", "-i", p], None).is_ok() {
                diffs.push(format!(
                    "{name}: crit refuses it ({}), we decode it",
                    theirs["error"]
                ));
            }
            *tally.entry("refused by both").or_default() += 1;
            continue;
        }
        for (style, args) in [
            ("plain", vec!["decode", "-i", p]),
            ("pretty", vec!["decode", "--pretty", "-i", p]),
        ] {
            match ours(&args, None) {
                Ok(text) if text == theirs[style].as_str().unwrap().as_bytes() => {
                    *tally.entry("decode texts equal").or_default() += 1
                }
                Ok(text) => diffs.push(format!(
                    "{name}: decode {style} differs\n ours: {}\n crit: {}",
                    String::from_utf8_lossy(&text),
                    theirs[style]
                )),
                Err(e) => diffs.push(format!("{name}: our decode {style} failed: {e}")),
            }
            let json = theirs[style].as_str().unwrap().as_bytes();
            let Some(enc) = theirs.get(format!("enc_{style}")) else {
                // crit cannot encode it (its own bug on some payloads).
                *tally.entry("crit cannot encode").or_default() += 1;
                continue;
            };
            let want = b64.decode(enc.as_str().unwrap()).unwrap();
            match ours(&["encode"], Some(json)) {
                Ok(bytes) if bytes == want => *tally.entry("encodes equal").or_default() += 1,
                Ok(bytes) => diffs.push(format!(
                    "{name}: encode of crit's {style} JSON differs ({} bytes, crit {})",
                    bytes.len(),
                    want.len()
                )),
                Err(e) => diffs.push(format!("{name}: our encode of {style} JSON failed: {e}")),
            }
        }
        // crit show (--nopl: payloads as their size).
        for (key, args) in [
            ("pretty", vec!["show", p]),
            ("nopl", vec!["show", "--nopl", p]),
        ] {
            let Some(want) = theirs.get(key) else {
                continue;
            };
            match ours(&args, None) {
                Ok(text) if text == want.as_str().unwrap().as_bytes() => {
                    *tally.entry("shows equal").or_default() += 1
                }
                Ok(text) => diffs.push(format!(
                    "{name}: show ({key}) differs\n ours: {}\n crit: {want}",
                    String::from_utf8_lossy(&text)
                )),
                Err(e) => diffs.push(format!("{name}: our show ({key}) failed: {e}")),
            }
        }
        // crit's info counts size-prefixed records, skipping no payload:
        // only the images without one are comparable.
        let kind = criu_image::Image::open(path).unwrap().kind;
        let has_payload = !matches!(
            kind.layout,
            criu_image::Layout::Entries(None) | criu_image::Layout::Pagemap
        );
        if let (false, Some(info)) = (has_payload, theirs.get("info")) {
            match ours(&["info", p], None) {
                Ok(text) if text == info.as_str().unwrap().as_bytes() => {
                    *tally.entry("infos equal").or_default() += 1
                }
                other => diffs.push(format!("{name}: info differs: {other:?} vs {info}")),
            }
        }
    }
}

fn compare_explore(dir: &Path, tally: &mut BTreeMap<&'static str, usize>, diffs: &mut Vec<String>) {
    for what in ["ps", "fds", "mems", "rss"] {
        let crit = Command::new(python())
            .current_dir(criu_source())
            .env("PYTHONPATH", "lib:crit")
            .args(["-m", "crit", "x"])
            .arg(dir)
            .arg(what)
            .output()
            .expect("running crit x");
        assert!(
            crit.status.success(),
            "crit x {what} failed: {}",
            String::from_utf8_lossy(&crit.stderr)
        );
        match ours(&["x", dir.to_str().unwrap(), what], None) {
            Ok(text) if text == crit.stdout => *tally.entry("x outputs equal").or_default() += 1,
            Ok(text) => diffs.push(format!(
                "{}: x {what} differs\n ours:\n{}\n crit:\n{}",
                dir.display(),
                String::from_utf8_lossy(&text),
                String::from_utf8_lossy(&crit.stdout)
            )),
            Err(e) => diffs.push(format!("{}: our x {what} failed: {e}", dir.display())),
        }
    }
}

#[test]
fn decode_encode_info_and_x_agree_with_crit_on_real_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    let cps = checkpoints(root.path());
    let mut tally = BTreeMap::new();
    let mut diffs = Vec::new();
    for (name, dir, _workload) in &cps {
        let before = diffs.len();
        compare_images(dir, &mut tally, &mut diffs);
        compare_explore(dir, &mut tally, &mut diffs);
        eprintln!("{name}: {} difference(s)", diffs.len() - before);
    }
    eprintln!("compared: {tally:?}");
    let names: Vec<String> = std::fs::read_dir(&cps[1].1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!("files checkpoint: {names:?}");
    assert!(
        diffs.is_empty(),
        "differences from crit:\n{}",
        diffs.join("\n")
    );
    // The checkpoints hold what the test meant them to: payloads of every
    // common kind were compared, not skipped.
    for (_, dir, _) in &cps {
        assert!(dir.join("pstree.img").exists());
    }
    let files = &cps[1].1;
    for image in ["pipes-data.img", "sk-queues.img", "files.img"] {
        assert!(
            files.join(image).exists(),
            "the files checkpoint lacks {image}"
        );
    }
    assert!(
        std::fs::read_dir(files).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("tcp-stream-")),
        "the files checkpoint has no TCP connection"
    );
    assert!(
        std::fs::read_dir(files).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("ghost-file-")),
        "the files checkpoint has no ghost file"
    );
    assert!(
        tally.get("encodes equal").copied().unwrap_or(0) >= 60,
        "too few images encoded: {tally:?}"
    );
    assert_eq!(tally.get("x outputs equal").copied(), Some(12), "{tally:?}");
}
