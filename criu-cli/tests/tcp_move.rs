//! `send --tcp-established --address-hook PROGRAM` moves a server with a
//! client connected between two network-namespace "hosts": the service
//! address moves with it (the hook is a shell script: iptables locks, `ip
//! addr` moves), and the client's session goes on without an error. The
//! three hosts (a, b, and the client's c) hang off a bridge in a fourth
//! namespace; every namespace is this test's and removed after. Needs root
//! and iptables.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, holds_within, scopeguard, Killed};

fn sh(script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The four namespaces, removed on drop.
struct Net {
    tag: String,
}

impl Net {
    fn ns(&self, h: &str) -> String {
        format!("ccli-{}-{h}", self.tag)
    }

    fn new() -> Net {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let net = Net {
            tag: format!("{}{n}", std::process::id() % 10_000),
        };
        let t = &net.tag;
        let mut script = String::new();
        for h in ["a", "b", "c", "s"] {
            script += &format!("ip netns add {}\n", net.ns(h));
        }
        let s = net.ns("s");
        script += &format!("ip -n {s} link add br0 type bridge\nip -n {s} link set br0 up\n");
        for (h, n) in [("a", 1), ("b", 2), ("c", 3)] {
            let ns = net.ns(h);
            script += &format!(
                "ip link add cc{t}{h} type veth peer name cp{t}{h}\n\
                 ip link set cc{t}{h} netns {ns} name eth0\n\
                 ip link set cp{t}{h} netns {s}\n\
                 ip -n {s} link set cp{t}{h} master br0 up\n\
                 ip -n {ns} addr add 10.77.0.{n}/24 dev eth0\n\
                 ip -n {ns} link set eth0 up\n\
                 ip -n {ns} link set lo up\n"
            );
        }
        script += &format!("ip -n {} addr add 10.77.0.100/24 dev eth0\n", net.ns("a"));
        sh(&script);
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in ["a", "b", "c", "s"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
    }
}

fn in_ns(net: &Net, h: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", net.ns(h))).args(argv);
    common::clean_start(&mut c, false);
    c
}

const SERVER: &str = r#"
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.77.0.100", 7000)); srv.listen(1)
open(sys.argv[1], "w").close()
conn, _ = srv.accept()
while True:
    data = conn.recv(64)
    if not data: break
    conn.sendall(data.upper())
"#;

const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("10.77.0.100", 7000), timeout=30)
n = 0
try:
    while True:
        n += 1
        s.sendall(b"ping %d\n" % n)
        reply = s.recv(64)
        if reply != b"PING %d\n" % n: raise Exception("reply %r to %d" % (reply, n))
        with open(sys.argv[1], "a") as f: f.write("%d\n" % n)
        time.sleep(0.02)
except Exception as e:
    with open(sys.argv[1], "a") as f: f.write("ERR %r\n" % e)
"#;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_for(f: impl FnMut() -> bool) -> bool {
    holds_within(Duration::from_secs(15), f)
}

#[test]
fn a_server_moves_with_its_client_connected_and_its_address() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("server.py"), SERVER).unwrap();
    std::fs::write(d.join("client.py"), CLIENT).unwrap();
    let (a, b) = (net.ns("a"), net.ns("b"));
    let hook = write_hook(&net, d);

    // The server: host a, the init of its own PID namespace.
    let ready = d.join("ready");
    let server_py = d.join("server.py");
    let ready_s = ready.to_str().unwrap();
    let (_server, root) = start_on_a(
        &net,
        d,
        &["/usr/bin/python3", server_py.to_str().unwrap(), ready_s],
    );
    assert!(wait_for(|| ready.exists()), "the server never listened");
    let out = d.join("client.out");
    let _client = start_client(&net, d, &out);
    assert!(
        wait_for(|| read(&out).lines().count() > 5),
        "the client got no replies: {}",
        read(&out)
    );

    let restored = run_move(&net, d, root, "stop-and-copy", &hook);
    // SAFETY: kill(2) of the server this test's receive restored.
    let _kill = scopeguard(move || unsafe {
        libc::kill(restored, libc::SIGKILL);
    });

    // The client's session goes on, answered by the server now on host b.
    let at = read(&out).lines().count();
    assert!(
        wait_for(|| read(&out).lines().count() > at + 10),
        "the client's session stalled after the move: {}",
        read(&out).lines().last().unwrap_or("")
    );
    assert!(
        !read(&out).contains("ERR"),
        "the client saw an error: {}",
        read(&out)
    );
    assert_on(restored, &b, "the restored server");
    // Nothing of the move's locks is left on either host.
    for h in [&a, &b] {
        let rules = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{h}"))
            .args(["iptables", "-S"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&rules.stdout).contains("10.77.0.100"),
            "a lock is left on {h}"
        );
    }
}

/// The client (`client.py` of `d`) on host c, writing to `out`.
fn start_client(net: &Net, d: &Path, out: &Path) -> Killed {
    let mut cmd = in_ns(net, "c", &["/usr/bin/python3"]);
    cmd.arg(d.join("client.py"))
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Killed(cmd.spawn().unwrap())
}

/// `pid` runs in the network namespace `ns`.
fn assert_on(pid: i32, ns: &str, what: &str) {
    let inode = |p: String| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    assert_eq!(
        inode(format!("/proc/{pid}/ns/net")),
        inode(format!("/run/netns/{ns}")),
        "{what} is not in {ns}"
    );
}

/// Starts `argv` on host a as the init of its own PID namespace, in
/// `dir`; the unshare process (killed on drop) and the tree's root pid.
/// Its own working directory: CRIU's parasite makes `proc.crtools` in the
/// dumped task's (its /proc is not its PID namespace's), and two dumps
/// from one directory at once fail with EEXIST.
fn start_on_a(net: &Net, dir: &Path, argv: &[&str]) -> (Killed, i32) {
    let mut cmd = in_ns(net, "a", &["unshare", "--pid", "--fork", "setsid"]);
    cmd.args(argv)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Killed(cmd.spawn().unwrap());
    let unshare = server.0.id();
    let mut root = 0;
    assert!(wait_for(|| {
        root = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        root > 0
    }));
    (server, root)
}

/// `receive` on b, `send` of `root` on a with the address hook; the pid
/// restored on b.
fn run_move(net: &Net, d: &Path, root: i32, strategy: &str, hook: &Path) -> i32 {
    let b = net.ns("b");
    let json = d.join(format!("recv-{strategy}.json"));
    let mut recv = Killed(
        in_ns(
            net,
            "b",
            &[bin(), "receive", "--listen", "10.77.0.2:7700", "--plain"],
        )
        .args(["--once", "--detach", "--tcp-established", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let listening = wait_for(|| {
        Command::new("ip")
            .args(["netns", "exec", &b, "ss", "-ltnH", "sport = :7700"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    });
    assert!(listening, "receive never listened");
    let send = in_ns(net, "a", &[bin(), "send", "--pid", &root.to_string()])
        .args(["--to", "10.77.0.2:7700", "--plain", "--tcp-established"])
        .args(["--strategy", strategy, "--address-hook"])
        .arg(hook)
        .output()
        .unwrap();
    let status = recv.0.wait().unwrap();
    let mut recv_err = String::new();
    use std::io::Read;
    let _ = recv.0.stderr.take().unwrap().read_to_string(&mut recv_err);
    assert!(
        send.status.success(),
        "{strategy}: send: {}\nreceive: {recv_err}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(status.success(), "{strategy}: receive: {recv_err}");
    let received: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(received["strategy"], strategy, "receive --json: {received}");
    received["restored_pid"].as_i64().unwrap() as i32
}

/// redis-cli on host c against the service address.
fn redis(net: &Net, input: &str) -> String {
    use std::io::Write;
    let mut child = in_ns(net, "c", &["redis-cli", "-h", "10.77.0.100", "-p", "6379"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

/// A client that INCRs one key every 20 ms and checks each answer is the
/// last plus one: the session and the data go on across the move.
const REDIS_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("10.77.0.100", 6379), timeout=30)
last = None
try:
    while True:
        s.sendall(b"INCR counter\r\n")
        reply = s.recv(64)
        if not reply.startswith(b":"): raise Exception("reply %r" % reply)
        n = int(reply[1:].strip())
        if last is not None and n != last + 1: raise Exception("%d after %d" % (n, last))
        last = n
        with open(sys.argv[1], "a") as f: f.write("%d\n" % n)
        time.sleep(0.02)
except Exception as e:
    with open(sys.argv[1], "a") as f: f.write("ERR %r\n" % e)
"#;

#[test]
fn redis_moves_with_its_data_and_a_connected_client_with_every_strategy() {
    assert!(
        Path::new("/usr/bin/redis-server").exists() && Path::new("/usr/bin/redis-cli").exists(),
        "redis-server and redis-cli are missing: run scripts/setup.sh (Debian package redis-server)"
    );
    for strategy in common::strategies(
        "tcp_move::redis_moves_with_its_data_and_a_connected_client_with_every_strategy",
    ) {
        let net = Net::new();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hook = write_hook(&net, d);
        let (_server, root) = start_on_a(
            &net,
            d,
            &[
                "redis-server",
                "--bind",
                "10.77.0.100",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                d.to_str().unwrap(),
            ],
        );
        assert!(
            wait_for(|| redis(&net, "PING\n").contains("PONG")),
            "{strategy}: redis never answered"
        );
        let mut load: String = (0..500)
            .map(|i| format!("SET key:{i} value-{i}\n"))
            .collect();
        load += "SETRANGE big 8000000 x\n";
        redis(&net, &load);
        assert_eq!(redis(&net, "DBSIZE\n").trim(), "501");
        std::fs::write(d.join("client.py"), REDIS_CLIENT).unwrap();
        let out = d.join("client.out");
        let _client = start_client(&net, d, &out);
        assert!(
            wait_for(|| read(&out).lines().count() > 5),
            "{strategy}: {}",
            read(&out)
        );

        let restored = run_move(&net, d, root, strategy, &hook);
        // SAFETY: kill(2) of the redis this test's receive restored.
        let _kill = scopeguard(move || unsafe {
            libc::kill(restored, libc::SIGKILL);
        });
        let at = read(&out).lines().count();
        assert!(
            wait_for(|| read(&out).lines().count() > at + 10),
            "{strategy}: the client's session stalled: {}",
            read(&out).lines().last().unwrap_or("")
        );
        assert!(!read(&out).contains("ERR"), "{strategy}: {}", read(&out));
        let after = redis(&net, "DBSIZE\nGET key:137\nSTRLEN big\n");
        let after: Vec<&str> = after.lines().collect();
        assert_eq!(
            after,
            ["502", "value-137", "8000001"],
            "{strategy}: the data on b"
        );
        assert_on(restored, &net.ns("b"), &format!("{strategy}: redis"));
    }
}

/// The address hook: an iptables lock on a, the address moved with `ip
/// addr`, b locked until announce, the client's neighbour cache flushed.
fn write_hook(net: &Net, d: &Path) -> std::path::PathBuf {
    let (a, b, c) = (net.ns("a"), net.ns("b"), net.ns("c"));
    let hook = d.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh -e\n\
             A=/run/netns/{a}; B=/run/netns/{b}; IP=10.77.0.100\n\
             case $1 in\n\
             lock) nsenter --net=$A iptables -w -I INPUT -d $IP -j DROP; nsenter --net=$A iptables -w -I OUTPUT -s $IP -j DROP ;;\n\
             move-to-dest) nsenter --net=$B iptables -w -I INPUT -d $IP -j DROP; ip -n {a} addr del $IP/24 dev eth0; ip -n {b} addr add $IP/24 dev eth0 ;;\n\
             announce) nsenter --net=$B iptables -w -D INPUT -d $IP -j DROP; ip -n {c} neigh flush all ;;\n\
             move-back) ip -n {b} addr del $IP/24 dev eth0 || true; ip -n {a} addr add $IP/24 dev eth0 || true; nsenter --net=$B iptables -w -D INPUT -d $IP -j DROP || true; ip -n {c} neigh flush all ;;\n\
             unlock) nsenter --net=$A iptables -w -D INPUT -d $IP -j DROP; nsenter --net=$A iptables -w -D OUTPUT -s $IP -j DROP ;;\n\
             esac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}
