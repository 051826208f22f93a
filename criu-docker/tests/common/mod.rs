//! Two Docker hosts (a `dockerd` in each of two network namespaces,
//! started by the test kit), an unmodified Redis from Debian's package as
//! a container image built from this machine's files (nothing pulled), a
//! user's container started with the `docker` command, and a tiny Redis
//! client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criu_docker::{
    receive, send, DockerClient, ReceiveConfig, ReceiveReport, SendConfig, SendReport,
};
use criu_testkit::container::docker::DockerHost;
use criu_testkit::hosts::{Host, TwoHosts};
use tempfile::TempDir;

/// The image's name and tag on both hosts.
pub const IMAGE: (&str, &str) = ("criu-docker-redis", "7");
/// Where Redis listens, on its host's address (host network mode).
pub const PORT: u16 = 6379;

/// The Redis server of Debian's package: `redis-server` is a link to
/// `redis-check-rdb` (the same program, which looks at its name).
const REDIS: &str = "/usr/bin/redis-server";

/// What each side of a move returned.
pub type Moved = (
    criu_docker::Result<SendReport>,
    criu_docker::Result<ReceiveReport>,
);

/// Two Docker hosts; fields drop in order (daemons, then namespaces, then
/// their directory).
pub struct Docker2 {
    pub a: DockerHost,
    pub b: DockerHost,
    pub hosts: TwoHosts,
    pub dir: TempDir,
}

impl Docker2 {
    /// Starts both daemons side by side.
    pub fn start() -> Docker2 {
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let (a, b) = std::thread::scope(|s| {
            let b = s.spawn(|| DockerHost::start(&hosts.b, &dir.path().join("b")));
            let a = DockerHost::start(&hosts.a, &dir.path().join("a"));
            (a.unwrap(), b.join().unwrap().unwrap())
        });
        Docker2 { a, b, hosts, dir }
    }

    pub fn uri(&self, host: &DockerHost) -> String {
        format!("unix://{}", socket(host).display())
    }

    pub fn client(&self, host: &DockerHost) -> DockerClient {
        DockerClient::connect(Some(&self.uri(host))).unwrap()
    }

    /// Runs `docker ARGS` against `host`'s daemon; its stdout.
    pub fn docker(&self, host: &DockerHost, args: &[&str]) -> String {
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(self.uri(host))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker inspect -f FORMAT CONTAINER` on `host`.
    pub fn inspect(&self, host: &DockerHost, container: &str, format: &str) -> String {
        self.docker(host, &["inspect", "-f", format, container])
    }

    /// Starts the user's Redis container on host a, with a configuration
    /// of its own (labels, environment, restart policy, host network);
    /// waits until it answers.
    pub fn run_redis(&self, name: &str) -> String {
        self.run_redis_with(name, &["--restart", "unless-stopped"])
    }

    /// [`Docker2::run_redis`] with `extra` options instead of the restart
    /// policy.
    pub fn run_redis_with(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(&REDIS_OPTIONS);
        args.extend_from_slice(extra);
        args.extend_from_slice(&REDIS_COMMAND);
        let id = self.docker(&self.a, &args);
        let a = self.hosts.a.addr;
        let up = wait(Duration::from_secs(30), || {
            on(&self.hosts.a, move || Redis::connect(a).is_ok())
        });
        assert!(up, "redis answers on {a}:{PORT}");
        id
    }

    /// Moves `container` from a to b: `receive` on b, `send` on a, over a
    /// TCP connection between the two namespaces.
    pub fn migrate(
        &self,
        container: &str,
        send_config: SendConfig,
        receive_config: ReceiveConfig,
    ) -> Moved {
        self.migrate_through(container, send_config, receive_config, None)
    }

    /// [`Docker2::migrate`] with the bytes from a to b passed through
    /// `relay` (which may cut the stream).
    pub fn migrate_through(
        &self,
        container: &str,
        send_config: SendConfig,
        receive_config: ReceiveConfig,
        relay: Option<fn(TcpStream, TcpStream)>,
    ) -> Moved {
        let b_addr = self.hosts.b.addr;
        let listener = on(&self.hosts.b, move || {
            TcpListener::bind((b_addr, 0)).unwrap()
        });
        let port = listener.local_addr().unwrap().port();
        let (src_docker, dst_docker) = (self.client(&self.a), self.client(&self.b));
        std::thread::scope(|s| {
            let dst = s.spawn(move || {
                let (from_a, _) = listener.accept().unwrap();
                let mut stream = match relay {
                    None => from_a,
                    Some(relay) => relayed(from_a, relay),
                };
                receive(&dst_docker, &mut stream, &receive_config)
            });
            let mut stream = on(&self.hosts.a, move || {
                TcpStream::connect((b_addr, port)).unwrap()
            });
            let src = send(&src_docker, container, &mut stream, &send_config);
            drop(stream);
            (src, dst.join().unwrap())
        })
    }
}

/// The `docker run` options of the Redis container, but for its name and
/// restart policy.
pub fn redis_options() -> Vec<&'static str> {
    vec![
        "--network",
        "host",
        "--label",
        "app=cache",
        "--label",
        "team=criu-rs",
        "-e",
        "GREETING=hello",
        "--workdir",
        "/data",
    ]
}

/// The image and command of the Redis container.
pub fn redis_command() -> Vec<&'static str> {
    vec![
        "criu-docker-redis:7",
        "/usr/bin/redis-server",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]
}

/// The `docker run` options of the Redis container, but for its name and
/// restart policy.
#[rustfmt::skip]
pub const REDIS_OPTIONS: [&str; 10] = [
    "--network", "host", "--label", "app=cache", "--label", "team=criu-rs",
    "-e", "GREETING=hello", "--workdir", "/data",
];

/// The image and command of the Redis container.
#[rustfmt::skip]
pub const REDIS_COMMAND: [&str; 10] = [
    "criu-docker-redis:7", "/usr/bin/redis-server", "--port", "6379", "--save", "",
    "--appendonly", "no", "--protected-mode", "no",
];

/// A second connection (on the loopback of the caller's namespace) whose
/// bytes from a go through `relay` (on its own thread); the answers come
/// back untouched.
fn relayed(from_a: TcpStream, relay: fn(TcpStream, TcpStream)) -> TcpStream {
    let inner = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let to_b = TcpStream::connect(inner.local_addr().unwrap()).unwrap();
    let (b_end, _) = inner.accept().unwrap();
    let (back_from, back_to) = (to_b.try_clone().unwrap(), from_a.try_clone().unwrap());
    std::thread::spawn(move || relay(from_a, to_b));
    std::thread::spawn(move || {
        let (mut r, mut w) = (back_from, back_to);
        let _ = std::io::copy(&mut r, &mut w);
    });
    b_end
}

/// A relay that passes the first `N` bytes as they come, then cuts both
/// ways.
pub fn cut_after<const N: usize>(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = N;
    while left > 0 {
        let n = match from.read(&mut buf[..left.min(64 * 1024)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        left -= n;
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Runs `f` in `host`'s network namespace.
pub fn on<T: Send>(host: &Host, f: impl FnOnce() -> T + Send) -> T {
    host.run(f).unwrap()
}

pub fn socket(host: &DockerHost) -> PathBuf {
    host.data_root().parent().unwrap().join("docker.sock")
}

/// Debian's docker command (20.10, as the daemon), else any on PATH.
pub fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

pub fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Imports the Redis image into `host`'s daemon.
pub fn import_redis(host: &DockerHost) {
    host.api()
        .import_image(redis_rootfs_tar(), IMAGE.0, IMAGE.1)
        .unwrap();
}

/// The libraries `ldd` names for `bin`.
fn libraries(bin: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success(), "ldd {bin}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A root filesystem holding Redis, its libraries (at the paths `ldd`
/// names, links resolved), and the usual mount points.
pub fn redis_rootfs_tar() -> Vec<u8> {
    assert!(
        Path::new(REDIS).exists(),
        "{REDIS} is missing: install redis-server (scripts/setup.sh does)"
    );
    let mut tar = tar::Builder::new(Vec::new());
    for d in ["dev", "proc", "sys", "tmp", "etc", "data", "usr/bin"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let mut files = vec![PathBuf::from(REDIS)];
    files.extend(libraries(REDIS));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        let path = f.strip_prefix("/").unwrap();
        tar.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

/// A Redis client that speaks just enough RESP.
pub struct Redis {
    r: BufReader<TcpStream>,
}

impl Redis {
    pub fn connect(addr: Ipv4Addr) -> std::io::Result<Redis> {
        let s = TcpStream::connect_timeout(&(addr, PORT).into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = Redis {
            r: BufReader::new(s),
        };
        match r.call(&["PING"])? {
            Reply::Status(s) if s == "PONG" => Ok(r),
            other => Err(std::io::Error::other(format!("PING: {other:?}"))),
        }
    }

    fn write(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.r.get_mut().write_all(cmd.as_bytes())
    }

    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.write(args)?;
        self.reply()
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap_or(i64::MIN)),
            "$" => match rest.parse::<i64>().unwrap_or(-1) {
                n if n < 0 => Reply::Nil,
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    self.r.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Reply::Bulk(String::from_utf8_lossy(&buf).into())
                }
            },
            _ => return Err(std::io::Error::other(format!("bad reply {line:?}"))),
        })
    }

    /// Stores `n` keys `key:I` = `value-I-<pattern>` (pipelined, by 500).
    pub fn fill(&mut self, n: usize) {
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let pairs: Vec<(String, String)> = chunk
                .iter()
                .map(|i| (format!("key:{i}"), value(*i)))
                .collect();
            let mut args = vec!["MSET"];
            for (k, v) in &pairs {
                args.push(k);
                args.push(v);
            }
            assert_eq!(self.call(&args).unwrap(), Reply::Status("OK".into()));
        }
    }

    /// Whether all `n` keys hold what [`Redis::fill`] stored, and only they.
    pub fn holds(&mut self, n: usize) -> bool {
        if self.call(&["DBSIZE"]).unwrap() != Reply::Int(n as i64) {
            return false;
        }
        (0..n)
            .step_by(97)
            .chain([n - 1])
            .all(|i| self.call(&["GET", &format!("key:{i}")]).unwrap() == Reply::Bulk(value(i)))
    }
}

/// The value of key `i`: about 1 KiB, different for each key.
pub fn value(i: usize) -> String {
    format!("value-{i}-{}", "abcdefghijklmnopqrstuvwxyz".repeat(40))
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
}
