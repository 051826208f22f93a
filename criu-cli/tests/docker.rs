//! `criu-rs send --docker` and `criu-rs receive --docker` as a user runs
//! them: the binary cargo built, one command in each of two network
//! namespaces, each with its own `dockerd` (started by the test kit), on
//! a user's Redis container (an unmodified Redis from Debian's package,
//! started with `docker run`) holding data in memory. Needs the `docker`
//! feature (`cargo test -p criu-cli --features docker --test docker`),
//! root, Docker 20.10 and CRIU (scripts/setup.sh).

#[cfg(not(feature = "docker"))]
#[test]
fn send_and_receive_docker() {
    criu_testkit::skip::skip(
        "docker::send_and_receive_docker",
        "criu-rs was built without the docker feature: run with --features criu-cli/docker",
    );
}

#[cfg(feature = "docker")]
#[path = "../../criu-docker/tests/common/mod.rs"]
mod hosts;

#[cfg(feature = "docker")]
mod cli {
    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddrV4, TcpListener};
    use std::path::Path;
    use std::process::{Child, Command, Output, Stdio};
    use std::thread::JoinHandle;

    use super::hosts::{import_redis, on, Docker2, Redis};

    /// Keys stored before each move (about 1 KiB each).
    const KEYS: usize = 5_000;

    fn criu_rs() -> &'static str {
        env!("CARGO_BIN_EXE_criu-rs")
    }

    fn fill_source(d: &Docker2) {
        let a = d.hosts.a.addr;
        on(&d.hosts.a, move || Redis::connect(a).unwrap().fill(KEYS));
    }

    /// Whether the Redis on host b (or a) answers and holds every key.
    fn serves_all(d: &Docker2, b: bool) -> bool {
        let host = if b { &d.hosts.b } else { &d.hosts.a };
        let addr = host.addr;
        on(host, move || {
            Redis::connect(addr).is_ok_and(|mut r| r.holds(KEYS))
        })
    }

    /// A port free on host b's address.
    fn free_port(d: &Docker2) -> SocketAddrV4 {
        let b = d.hosts.b.addr;
        on(&d.hosts.b, move || {
            let l = TcpListener::bind((b, 0)).unwrap();
            SocketAddrV4::new(b, l.local_addr().unwrap().port())
        })
    }

    /// A `receive` on host b, its output piped.
    struct Receiver {
        child: Child,
        /// Its stderr up to "waiting for a container".
        head: Vec<String>,
        /// The rest of its stderr, read to its end on a thread of its own
        /// (so that it never blocks on a full pipe).
        tail: JoinHandle<Vec<String>>,
    }

    impl Receiver {
        /// Starts `criu-rs receive --docker` on host b's daemon and waits
        /// until it says it listens.
        fn start(d: &Docker2, listen: SocketAddrV4, json: &Path) -> Receiver {
            let mut cmd = Command::new(criu_rs());
            cmd.args(["receive", "--docker", "--plain", "--docker-host"])
                .arg(d.uri(&d.b))
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--json")
                .arg(json)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = on(&d.hosts.b, move || cmd.spawn().unwrap());
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut head = Vec::new();
            for line in lines.by_ref() {
                let line = line.unwrap();
                let listening = line.starts_with("waiting for a container");
                head.push(line);
                if listening {
                    break;
                }
            }
            let listening = head.last().is_some_and(|l| l.starts_with("waiting"));
            let tail = std::thread::spawn(move || lines.map_while(Result::ok).collect());
            let r = Receiver { child, head, tail };
            if !listening {
                panic!("receive did not listen: {}", text(&r.wait()));
            }
            r
        }

        /// Waits for it to end: its output, with its whole stderr.
        fn wait(self) -> Output {
            let mut out = self.child.wait_with_output().unwrap();
            let mut stderr = self.head;
            stderr.extend(self.tail.join().unwrap());
            out.stderr = stderr.join("\n").into_bytes();
            out
        }
    }

    /// `criu-rs send --docker CONTAINER` on host a, to `to`.
    fn send(d: &Docker2, container: &str, to: SocketAddrV4, json: &Path) -> Output {
        let mut cmd = Command::new(criu_rs());
        cmd.args(["send", "--docker", container, "--plain", "--docker-host"])
            .arg(d.uri(&d.a))
            .arg("--to")
            .arg(to.to_string())
            .arg("--json")
            .arg(json)
            .stdin(Stdio::null());
        on(&d.hosts.a, move || cmd.output().unwrap())
    }

    fn text(out: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_users_container_moves_with_one_command_on_each_host() {
        let d = Docker2::start();
        import_redis(&d.a);
        import_redis(&d.b);
        let name = "cache";
        let source_id = d.run_redis(name);
        fill_source(&d);
        let to = free_port(&d);
        let reports = tempfile::tempdir().unwrap();
        let (sent, received) = (reports.path().join("a.json"), reports.path().join("b.json"));

        let receiver = Receiver::start(&d, to, &received);
        let src = send(&d, name, to, &sent);
        let dst = receiver.wait();

        assert!(src.status.success(), "send: {}", text(&src));
        assert!(dst.status.success(), "receive: {}", text(&dst));
        // B runs the container, serving every key from its memory.
        assert!(serves_all(&d, true), "redis on b holds all {KEYS} keys");
        assert_eq!(d.inspect(&d.b, name, "{{.State.Running}}"), "true");
        // A's is gone, and nothing answers there.
        assert!(!d.client(&d.a).container_exists(&source_id).unwrap());
        let a = d.hosts.a.addr;
        assert!(on(&d.hosts.a, move || Redis::connect(a).is_err()));
        // Both reports, as --json wrote them, tell the same move.
        let (s, r) = (json(&sent), json(&received));
        assert_eq!(s["container"], name, "{s}");
        assert!(s["source_removed"].as_bool().unwrap(), "{s}");
        assert!(s["downtime_us"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["dest_id"], r["id"], "{s} {r}");
        assert_eq!(s["transfer"]["bytes"], r["transfer"]["bytes"], "{s} {r}");
        assert!(r["source_confirmed"].as_bool().unwrap(), "{r}");
        let summary = String::from_utf8_lossy(&src.stderr);
        assert!(summary.contains("moved container cache"), "{summary}");
    }

    #[test]
    fn a_move_the_destination_cannot_run_is_refused_before_the_source_stops() {
        let d = Docker2::start();
        // B has no image for the container, and no registry is named.
        import_redis(&d.a);
        let name = "cache";
        d.run_redis(name);
        fill_source(&d);
        let started = d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}");
        let to = free_port(&d);
        let reports = tempfile::tempdir().unwrap();

        let receiver = Receiver::start(&d, to, &reports.path().join("b.json"));
        let src = send(&d, name, to, &reports.path().join("a.json"));
        let dst = receiver.wait();

        // Exit 7 on both sides: refused at pre-flight, nothing stopped.
        assert_eq!(src.status.code(), Some(7), "send: {}", text(&src));
        assert_eq!(dst.status.code(), Some(7), "receive: {}", text(&dst));
        let said = String::from_utf8_lossy(&src.stderr);
        assert!(said.contains("--registry"), "the fix is named: {said}");
        assert_eq!(
            d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}"),
            started
        );
        assert!(serves_all(&d, false), "redis on a holds all {KEYS} keys");
        assert!(!d.client(&d.b).container_exists(name).unwrap());
    }
}
