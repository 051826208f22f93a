//! `criu-rs push` and `pull` through a real registry (Debian's
//! `docker-registry`, started here on a free loopback port, plain HTTP),
//! and `export`/`import`: a process dumped, its checkpoint pushed, pulled
//! into a new directory and restored from there, counting on. Needs root
//! and the `docker-registry` package (scripts/setup.sh installs it).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, holds_within, Killed};

fn registry(dir: &Path) -> (Killed, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir(dir.join("storage")).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: criu-cli-test\n",
        dir.join("storage").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting docker-registry: {e}; run scripts/setup.sh"));
    let r = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (r, port)
}

fn cli(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "criu-rs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn grows(path: &Path) -> bool {
    let at = lines(path);
    holds_within(Duration::from_secs(10), || lines(path) > at)
}

#[test]
fn a_checkpoint_pushed_and_pulled_restores_and_an_archive_unpacks_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (_registry, port) = registry(dir.path());
    let out = dir.path().join("out");
    let script = "import sys, time\nn = 0\nwhile True:\n    n += 1\n    open(sys.argv[1], 'a').write('%d\\n' % n)\n    time.sleep(0.02)\n";
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", script])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::clean_start(&mut cmd, true);
    let mut w = Killed(cmd.spawn().unwrap());
    let pid = w.0.id().to_string();
    assert!(grows(&out));
    let img = dir.path().join("img");
    let img_s = img.to_str().unwrap();
    cli(&["dump", "--pid", &pid, "--images-dir", img_s]);
    let _ = w.0.wait(); // the dump killed it: reaped, its pid is free

    let reference = format!("127.0.0.1:{port}/criu-cli/counter:1");
    let pushed = cli(&[
        "push",
        "--images-dir",
        img_s,
        &reference,
        "--plain-http",
        "--name",
        "counter",
        "--json",
    ]);
    let pushed: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
    assert!(pushed["layer_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let pulled = dir.path().join("pulled");
    let piped = cli(&[
        "pull",
        &reference,
        "--target",
        pulled.to_str().unwrap(),
        "--plain-http",
    ]);
    // Piped: the one line on stdout, no progress bar on stderr.
    assert!(String::from_utf8_lossy(&piped.stdout).starts_with("pulled "));
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let archive = dir.path().join("ck.tar");
    let a = archive.to_str().unwrap();
    cli(&[
        "export",
        "--images-dir",
        img_s,
        "-o",
        a,
        "--compression",
        "none",
    ]);
    let imported = dir.path().join("imported");
    cli(&["import", "-i", a, "--target", imported.to_str().unwrap()]);
    let ps = |d: &Path| cli(&["x", d.to_str().unwrap(), "ps"]).stdout;
    assert_eq!(ps(&img), ps(&pulled.join("checkpoint")));
    assert_eq!(ps(&img), ps(&imported.join("checkpoint")));

    // A reference that is not there: exit 4 or 1 with a hint, not a panic.
    let missing = Command::new(bin())
        .args([
            "pull",
            &format!("127.0.0.1:{port}/criu-cli/none:1"),
            "--plain-http",
        ])
        .args(["--target", dir.path().join("none").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: "));

    let restored = cli(&[
        "restore",
        "--images-dir",
        pulled.join("checkpoint").to_str().unwrap(),
        "--json",
    ]);
    let restored: serde_json::Value = serde_json::from_slice(&restored.stdout).unwrap();
    let rpid = restored["pid"].as_i64().unwrap() as i32;
    let counted = grows(&out);
    // SAFETY: kill(2) of the pid this test restored.
    unsafe { libc::kill(rpid, libc::SIGKILL) };
    assert_eq!(rpid.to_string(), pid);
    assert!(
        counted,
        "the checkpoint pulled from the registry does not count on"
    );
}
