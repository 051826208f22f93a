//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) in a third network namespace, bridged to both
//! hosts of a [`TwoHosts`], with its storage in a temporary directory in
//! `/dev/shm` (memory, as the direct strategies' images) and,
//! optionally, htpasswd basic authentication. It listens only on its
//! namespace's address; dropping it kills it (by pid), deletes the
//! namespace and removes the storage.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criu_oci::{Registry, RegistryConfig};

use crate::hosts::{check_output, ip, Host, TwoHosts};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The registry's address on the bridge; host a is .1, host b is .2.
pub const REGISTRY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 254);
const PORT: u16 = 5000;
/// Where the registry's directory (storage, config, log) is made: a tmpfs.
const STORAGE_PARENT: &str = "/dev/shm";

/// A running registry in its own network namespace.
#[derive(Debug)]
pub struct RegistryHost {
    /// The registry's namespace.
    pub host: Host,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RegistryHost {
    /// Creates the namespace, links `hosts.a` (10.232.0.1) and `hosts.b`
    /// (10.232.0.2) to it through a bridge, and starts the registry there,
    /// with basic authentication when `user` is given. Waits until it
    /// accepts connections.
    pub fn start(hosts: &TwoHosts, user: Option<(&str, &str)>) -> io::Result<RegistryHost> {
        Self::start_with(hosts, user, false)
    }

    /// Like [`RegistryHost::start`], serving HTTPS with a certificate for
    /// its address signed by a fresh private CA ([`RegistryHost::ca_pem`]),
    /// made with the `openssl` command.
    pub fn start_tls(hosts: &TwoHosts, user: Option<(&str, &str)>) -> io::Result<RegistryHost> {
        Self::start_with(hosts, user, true)
    }

    fn start_with(
        hosts: &TwoHosts,
        user: Option<(&str, &str)>,
        tls: bool,
    ) -> io::Result<RegistryHost> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let host = Host {
            name: format!("criu-rs-{}-{n}-reg", std::process::id()),
            addr: REGISTRY_ADDR,
        };
        ip(&["netns", "add", &host.name])?;
        // In memory, as the direct strategies' images are: the registry
        // writes every blob pushed and reads it back for every pull.
        let dir = tempfile::Builder::new()
            .prefix("criu-rs-registry-")
            .tempdir_in(STORAGE_PARENT)?;
        let mut reg = RegistryHost {
            host,
            child: None,
            dir,
        };
        reg.link(&[(&hosts.a, 1), (&hosts.b, 2)])?;
        if tls {
            reg.make_certificates()?;
        }
        reg.write_config(user, tls)?;
        reg.spawn()?;
        reg.wait_ready(Duration::from_secs(20))?;
        if user.is_none() && !tls {
            reg.warm_up()?;
        }
        Ok(reg)
    }

    /// The registry process's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// `host:port`, for image references.
    pub fn address(&self) -> String {
        format!("{REGISTRY_ADDR}:{PORT}")
    }

    /// A reference no image has yet: `addr/criu-rs/<name>-<unique>:latest`
    /// (`name` with anything but letters and digits made `-`).
    pub fn fresh_reference(&self, name: &str) -> String {
        let repo = name.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        format!("{}/criu-rs/{}:latest", self.address(), unique_tag(&repo))
    }

    /// A plain-HTTP client for each host of `hosts`, each having asked
    /// the registry for `reference` once from its own host: that finds an
    /// unreachable registry (or refused credentials) before a move stops
    /// its source, and takes the client's one-time set-up (seen: ~0.5 s,
    /// once per process) out of the downtime. Both are made before the
    /// source stops, too: building one loads the system's CA certificates.
    /// Their sockets are made in whichever host's thread runs a request.
    pub fn clients(
        &self,
        hosts: &TwoHosts,
        reference: &str,
    ) -> Result<(Registry, Registry), crate::container::BoxError> {
        let config = RegistryConfig {
            plain_http: true,
            ..RegistryConfig::default()
        };
        let (a, b) = (Registry::new(&config)?, Registry::new(&config)?);
        hosts.a.run(|| a.ping(reference))??;
        hosts.b.run(|| b.ping(reference))??;
        Ok((a, b))
    }

    /// The registry's storage root (`docker/registry/v2/...` inside).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the blob `sha256:HEX`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The requests the registry served so far, from its access log, as
    /// `METHOD /path` (e.g. `GET /v2/criu-rs/x/blobs/sha256:...`).
    pub fn requests(&self) -> Vec<String> {
        let methods = ["GET ", "HEAD ", "PUT ", "POST ", "PATCH ", "DELETE "];
        self.log()
            .lines()
            .filter_map(|l| {
                // Combined log format: ... "GET /v2/... HTTP/1.1" 200 ...
                let quoted = l.split('"').nth(1)?;
                methods.iter().any(|m| quoted.starts_with(m)).then(|| {
                    quoted
                        .rsplit_once(' ')
                        .map_or(quoted, |(r, _)| r)
                        .to_string()
                })
            })
            .collect()
    }

    fn link(&self, peers: &[(&Host, u8)]) -> io::Result<()> {
        let r = &self.host.name;
        ip(&["-n", r, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{REGISTRY_ADDR}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", r, "link", "set", "br0", "up"])?;
        ip(&["-n", r, "link", "set", "lo", "up"])?;
        for (peer, last) in peers {
            let port = format!("v{last}");
            ip(&[
                "-n", &peer.name, "link", "add", "reg0", "type", "veth", "peer", "name", &port,
                "netns", r,
            ])?;
            ip(&["-n", r, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("10.232.0.{last}/24");
            ip(&["-n", &peer.name, "addr", "add", &addr, "dev", "reg0"])?;
            ip(&["-n", &peer.name, "link", "set", "reg0", "up"])?;
        }
        Ok(())
    }

    /// The private CA's certificate (PEM) of a registry started with
    /// [`RegistryHost::start_tls`].
    pub fn ca_pem(&self) -> io::Result<Vec<u8>> {
        fs::read(self.dir.path().join("ca.pem"))
    }

    /// A CA, and a server certificate for the registry's address signed
    /// by it (a self-signed certificate will not do: rustls refuses a CA
    /// certificate as a server's).
    fn make_certificates(&self) -> io::Result<()> {
        let d = self.dir.path();
        let ext = d.join("server.ext");
        fs::write(
            &ext,
            format!("subjectAltName=IP:{REGISTRY_ADDR}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )?;
        let p = |name: &str| d.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    &p("ca.key"),
                    "-out",
                    &p("ca.pem"),
                    "-days",
                    "1",
                    "-subj",
                    "/CN=criu-rs test CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &p("key.pem"),
                    "-out",
                    &p("server.csr"),
                    "-subj",
                    "/CN=criu-rs test registry",
                ],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("cert.pem"),
            "-days",
            "1",
            "-extfile",
            &p("server.ext"),
        ])
    }

    fn write_config(&self, user: Option<(&str, &str)>, tls: bool) -> io::Result<()> {
        let d = self.dir.path();
        fs::create_dir(d.join("storage"))?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {REGISTRY_ADDR}:{PORT}\n  secret: criu-rs-test-{}\n",
            d.join("storage").display(),
            std::process::id()
        );
        if tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            ));
        }
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).map_err(io::Error::other)?;
            fs::write(d.join("htpasswd"), format!("{name}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: criu-rs\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        fs::write(d.join("config.yml"), config)
    }

    /// Starts `docker-registry serve` in the namespace (nsenter switches
    /// only the network namespace and execs, so the child's pid is the
    /// registry's).
    fn spawn(&mut self) -> io::Result<()> {
        let log = fs::File::create(self.dir.path().join("registry.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.netns_path().display()))
            .args(["docker-registry", "serve"])
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::close_inherited_fds(&mut cmd);
        self.child = Some(cmd.spawn().map_err(|e| {
            io::Error::other(format!(
                "starting docker-registry: {e}; install it with scripts/setup.sh (Debian package docker-registry)"
            ))
        })?);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let addr = SocketAddr::from((REGISTRY_ADDR, PORT));
        let deadline = Instant::now() + timeout;
        loop {
            let up = self
                .host
                .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
            if up {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "docker-registry exited ({status}) before serving: {}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "docker-registry did not listen on {addr} within {timeout:?}: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn openssl(args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl").args(args).output().map_err(|e| {
        io::Error::other(format!(
            "running openssl: {e}; install it (scripts/setup.sh)"
        ))
    })?;
    check_output("openssl", args, &out)
}

impl RegistryHost {
    /// Writes one empty blob (POST, then PUT, over plain HTTP). A fresh
    /// registry's first blob write was seen to take 0.5 to 1 s here (its
    /// own start-up work, once); a cluster's registry has long done it, so
    /// it is kept out of the measured moves.
    fn warm_up(&self) -> io::Result<()> {
        const EMPTY: &str =
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let started = self.http("POST", "/v2/criu-rs/warm-up/blobs/uploads/")?;
        let location = started
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            })
            .filter(|_| started.starts_with("HTTP/1.1 202"))
            .ok_or_else(|| io::Error::other(format!("warm-up upload refused: {started}")))?;
        // The location is absolute (http://addr/path?state) or a path.
        let path = location
            .strip_prefix(&format!("http://{}", self.address()))
            .unwrap_or(&location);
        let sep = if path.contains('?') { '&' } else { '?' };
        let done = self.http("PUT", &format!("{path}{sep}digest={EMPTY}"))?;
        if done.starts_with("HTTP/1.1 201") {
            Ok(())
        } else {
            Err(io::Error::other(format!("warm-up upload refused: {done}")))
        }
    }

    /// One bodiless HTTP/1.1 request from the registry's own namespace;
    /// the answer's head and body.
    fn http(&self, method: &str, path: &str) -> io::Result<String> {
        use std::io::{Read, Write};
        let addr = self.address();
        self.host.run(|| -> io::Result<String> {
            let mut s = TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })?
    }
}

impl Drop for RegistryHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "del", &self.host.name]);
    }
}

/// A tag unique to this process and call, for image references.
pub fn unique_tag(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}
