//! CRIU's helper daemons, which libcriu cannot start: the page server
//! (`criu page-server`, receives memory pages of a dump over TCP), the
//! lazy-pages daemon (`criu lazy-pages`, feeds a lazily restored tree its
//! pages on demand) and the RPC service (`criu service`, which serves
//! requests without starting a `criu` process for each). Each is an owned
//! child process: started, checked for readiness through CRIU's
//! `--status-fd`, and killed and reaped on drop. When one fails, the error
//! quotes its log.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client::Criu;
use crate::error::{error_lines, Error, Result};
use crate::images::{private_dir, read_tail, ImagesDir, MAX_LOG_TAIL};
use crate::spawn::{hand_over_fds, OwnedChild};

/// The descriptor number the daemon reports readiness on.
const STATUS_FD: i32 = 3;

/// The descriptor number of a connected socket handed to a daemon
/// (`--ps-socket`).
const PS_FD: i32 = 4;

/// A running CRIU daemon (page server or lazy-pages).
#[derive(Debug)]
pub struct Daemon {
    what: &'static str,
    child: OwnedChild,
    dir: PathBuf,
    log_file: String,
}

/// How to start a daemon: which binary, and in which network namespace.
#[derive(Debug, Clone, Default)]
pub struct DaemonConfig {
    binary: Option<PathBuf>,
    netns: Option<PathBuf>,
    ready_timeout: Option<Duration>,
    tls: Option<crate::credentials::TlsFiles>,
    /// The largest file the daemon may write (`RLIMIT_FSIZE`: a write
    /// beyond kills it with `SIGXFSZ`), for a page server bounded by the
    /// destination's limits.
    max_file_bytes: Option<u64>,
}

impl DaemonConfig {
    /// Defaults: `criu` from `PATH`, this network namespace, 10 s to start.
    pub fn new() -> DaemonConfig {
        DaemonConfig::default()
    }

    /// Use this `criu` binary.
    pub fn binary(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.binary = Some(path.as_ref().to_path_buf());
        self
    }

    /// Run the daemon in the network namespace bound at `path` (such as
    /// `/run/netns/NAME`), switching only the network namespace.
    pub fn netns(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.netns = Some(path.as_ref().to_path_buf());
        self
    }

    /// How long the daemon may take to report that it is ready.
    pub fn ready_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// The page server and the lazy-pages daemon talk TLS (CRIU's own,
    /// GnuTLS) with these files, and require the peer's certificate to
    /// chain to their CA. See [`crate::tls`].
    pub fn tls(&mut self, files: &crate::credentials::TlsFiles) -> &mut Self {
        self.tls = Some(files.clone());
        self
    }

    /// Bounds each file the daemon writes to `bytes` (a page server
    /// bounded by the destination's limits).
    #[cfg(feature = "migrate")]
    pub(crate) fn max_file_bytes(&mut self, bytes: u64) -> &mut Self {
        self.max_file_bytes = Some(bytes);
        self
    }

    /// The TLS arguments of a daemon that connects or listens over TCP.
    fn tls_args(&self) -> Vec<OsString> {
        self.tls
            .as_ref()
            .map_or_else(Vec::new, crate::credentials::TlsFiles::criu_args)
    }

    /// Starts `criu page-server` writing received pages into `images`,
    /// listening on `listen`. It exits after one dump has sent its pages.
    pub fn page_server(&self, images: &ImagesDir, listen: SocketAddr) -> Result<Daemon> {
        let mut args: Vec<OsString> = vec!["page-server".into()];
        args.extend(address_args(listen));
        args.extend(self.tls_args());
        self.start("page server", "page-server.log", images.path(), args, None)
    }

    /// Starts `criu page-server` serving one dump over `socket`, already
    /// connected (`--ps-socket`; no listener, no TLS of CRIU's: the
    /// migration's transport carries the other end, see
    /// `crate::transfer::SideChannels`).
    #[cfg(feature = "migrate")]
    pub(crate) fn page_server_on(&self, images: &ImagesDir, socket: &OwnedFd) -> Result<Daemon> {
        let args: Vec<OsString> = vec![
            "page-server".into(),
            "--ps-socket".into(),
            PS_FD.to_string().into(),
        ];
        let fd = Some(socket.as_raw_fd());
        self.start("page server", "page-server.log", images.path(), args, fd)
    }

    /// Starts `criu lazy-pages`, which fetches pages from the lazy dump's
    /// page server at `source` and serves them to a lazy restore from
    /// `images`. It exits when every page has been delivered.
    pub fn lazy_pages(&self, images: &ImagesDir, source: SocketAddr) -> Result<Daemon> {
        let mut args: Vec<OsString> = vec!["--page-server".into()];
        args.extend(address_args(source));
        args.extend(self.tls_args());
        self.start_lazy_pages(images, args)
    }

    /// Starts `criu lazy-pages` with `args` on `images`.
    fn start_lazy_pages(&self, images: &ImagesDir, args: Vec<OsString>) -> Result<Daemon> {
        let args = std::iter::once("lazy-pages".into()).chain(args).collect();
        self.start(
            "lazy-pages daemon",
            "lazy-pages.log",
            images.path(),
            args,
            None,
        )
    }

    /// Starts `criu lazy-pages` serving a lazy restore from `images`
    /// themselves (no page server): the pages of the images and of their
    /// parents that CRIU marked lazy are filled in after the tree resumes,
    /// as it touches them and in the background. It exits when every
    /// page has been delivered.
    #[cfg(feature = "migrate")]
    pub(crate) fn lazy_pages_local(&self, images: &ImagesDir) -> Result<Daemon> {
        self.start_lazy_pages(images, Vec::new())
    }

    /// Starts `criu lazy-pages` fetching the lazy dump's pages over
    /// `socket`, already connected to the dump's page server
    /// (`--ps-socket`; no TLS of CRIU's: the migration's transport carries
    /// the other end), and serving them to a lazy restore from `images`.
    #[cfg(feature = "migrate")]
    pub(crate) fn lazy_pages_on(&self, images: &ImagesDir, socket: &OwnedFd) -> Result<Daemon> {
        let args: Vec<OsString> = vec![
            "lazy-pages".into(),
            "--page-server".into(),
            "--ps-socket".into(),
            PS_FD.to_string().into(),
        ];
        let fd = Some(socket.as_raw_fd());
        self.start(
            "lazy-pages daemon",
            "lazy-pages.log",
            images.path(),
            args,
            fd,
        )
    }

    /// Starts a long-running `criu service` on a unix socket in a private
    /// directory of its own (mode 0700; the socket is 0600), for
    /// [`Service::client`] to send requests to.
    ///
    /// Without it, every call starts `criu swrk`: an `exec` and the dynamic
    /// linking of a large binary each time. The service forks an
    /// already-loaded worker per request instead; a 1 MiB dump took
    /// ~17 ms through it against ~23 ms here (see BENCHMARKS.md).
    pub fn service(&self) -> Result<Service> {
        let dir = private_dir("criu-rs-service-")
            .map_err(|e| Error::io("creating the CRIU service's directory", e))?;
        let socket = dir.path().join("criu.sock");
        let args: Vec<OsString> = vec![
            "service".into(),
            "--address".into(),
            socket.clone().into_os_string(),
        ];
        let daemon = self.start("CRIU service", "service.log", dir.path(), args, None)?;
        Ok(Service {
            daemon,
            socket,
            _dir: dir,
        })
    }

    fn start(
        &self,
        what: &'static str,
        log_file: &str,
        dir: &Path,
        mut args: Vec<OsString>,
        socket: Option<i32>,
    ) -> Result<Daemon> {
        let dir = dir.to_path_buf();
        args.extend([
            "-D".into(),
            dir.clone().into_os_string(),
            "-o".into(),
            log_file.into(),
            "--status-fd".into(),
            STATUS_FD.to_string().into(),
        ]);
        let (read, write) =
            // Close-on-exec: a process another thread spawns meanwhile must
            // not hold the write end (its EOF tells us the daemon died).
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Error::io("creating a status pipe", e.into()))?;
        let netns =
            match &self.netns {
                Some(p) => Some(File::open(p).map_err(|e| {
                    Error::io(format!("opening network namespace {}", p.display()), e)
                })?),
                None => None,
            };
        let binary = self.binary.clone().unwrap_or_else(|| PathBuf::from("criu"));
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut fds = vec![(write.as_raw_fd(), STATUS_FD)];
        fds.extend(socket.map(|fd| (fd, PS_FD)));
        hand_over_fds(&mut cmd, fds, netns.as_ref().map(AsRawFd::as_raw_fd));
        if let Some(bytes) = self.max_file_bytes {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` is a copy.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = OwnedChild::spawn(&mut cmd, &format!("{what} ({})", binary.display()))?;
        drop(write);
        drop(netns);
        let mut daemon = Daemon {
            what,
            child,
            dir,
            log_file: log_file.to_string(),
        };
        daemon.wait_ready(read, self.ready_timeout.unwrap_or(Duration::from_secs(10)))?;
        Ok(daemon)
    }
}

impl Daemon {
    fn failure(&self, message: String) -> Error {
        let log = read_tail(&self.dir.join(&self.log_file), MAX_LOG_TAIL).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines = error_lines(&log);
        let mut message = format!("{}: {message}", self.what);
        if !lines.is_empty() {
            message.push_str(&format!(
                "\n  its {} says:\n    {}",
                self.log_file,
                lines.join("\n    ")
            ));
        }
        Error::Daemon { message }
    }

    /// Waits for the one byte CRIU writes to its status fd when it is ready.
    fn wait_ready(&mut self, read: OwnedFd, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // SAFETY: `read` is an owned pipe end, handed over to the File.
        let mut f = unsafe { File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(read)) };
        let fd = f.as_raw_fd();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let e = self.failure(format!("not ready after {timeout:?}"));
                self.kill();
                return Err(e);
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.kill();
                return Err(Error::io("waiting for a CRIU daemon", err));
            }
            if rc == 0 {
                continue;
            }
            let mut byte = [0u8; 1];
            return match f.read(&mut byte) {
                Ok(1) => Ok(()),
                _ => {
                    // EOF: it exited (or closed the fd) without being ready.
                    let status = self.child.wait();
                    Err(self.failure(format!("exited before it was ready ({})", describe(status))))
                }
            };
        }
    }

    /// Waits for the daemon to finish its job and exit; an exit other than
    /// success is an error quoting its log. After `timeout` it is killed.
    pub fn wait(self, timeout: Duration) -> Result<()> {
        self.wait_unless(timeout, || false)
    }

    /// Like [`Daemon::wait`], and kills the daemon as soon as `stop` says
    /// so (a cancelled migration), with an error.
    pub(crate) fn wait_unless(mut self, timeout: Duration, stop: impl Fn() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if self.child.pid().is_none() {
            return Ok(());
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(self.failure(format!("failed ({})", describe(Some(status)))))
                    };
                }
                Ok(None) if stop() => {
                    let e = self.failure("stopped: the migration was cancelled; killed".into());
                    self.kill();
                    return Err(e);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let e = self.failure(format!("still running after {timeout:?}; killed"));
                    self.kill();
                    return Err(e);
                }
                Err(e) => return Err(Error::io(format!("waiting for the {}", self.what), e)),
            }
        }
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Kills and reaps the daemon now.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// The path of its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(&self.log_file)
    }
}

/// A running `criu service` owned by this process (see
/// [`DaemonConfig::service`]). Dropping it kills and reaps the service and
/// removes its directory; requests it is serving at that moment run to
/// their end in their own worker processes.
///
/// Through a service:
/// * [`Criu::restore`] restores the tree as a child of the service's
///   worker, which exits after answering: the tree is then an orphan,
///   adopted by the nearest subreaper or by init. [`Criu::restore_child`]
///   and [`Options::add_inherit_fd`](crate::Options::add_inherit_fd) make
///   libcriu start `criu` itself, as without a service.
/// * A [`deadline`](crate::Options::deadline) is refused: it needs the
///   crate to start CRIU itself, to be able to kill it.
#[derive(Debug)]
pub struct Service {
    // Field order matters: the service goes before its directory.
    daemon: Daemon,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// A client that sends its requests to this service. It borrows the
    /// service, so the service cannot be dropped (killed, its directory
    /// removed) while the client is in use:
    ///
    /// ```compile_fail,E0505
    /// let service = criu::DaemonConfig::new().service()?;
    /// let client = service.client();
    /// drop(service);
    /// client.check()?;
    /// # Ok::<(), criu::Error>(())
    /// ```
    ///
    /// The same lines with the service dropped after its client compile,
    /// so the example above fails for that drop alone (stable rustdoc does
    /// not check the error code it names):
    ///
    /// ```no_run
    /// let service = criu::DaemonConfig::new().service()?;
    /// let client = service.client();
    /// client.check()?;
    /// drop(client);
    /// drop(service);
    /// # Ok::<(), criu::Error>(())
    /// ```
    pub fn client(&self) -> ServiceClient<'_> {
        ServiceClient {
            criu: Criu::with_service_address(&self.socket),
            _service: std::marker::PhantomData,
        }
    }

    /// The service's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The service's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// The service's own log (each request logs to its own file, in the
    /// work directory it names).
    pub fn log_path(&self) -> PathBuf {
        self.daemon.log_path()
    }
}

/// A [`Criu`] that sends its requests to a [`Service`], which it borrows
/// (see [`Service::client`]); use it as a `Criu`.
#[derive(Debug)]
pub struct ServiceClient<'s> {
    criu: Criu,
    _service: std::marker::PhantomData<&'s Service>,
}

impl std::ops::Deref for ServiceClient<'_> {
    type Target = Criu;

    fn deref(&self) -> &Criu {
        &self.criu
    }
}

/// CRIU's arguments for a TCP address: `--address IP --port PORT`.
fn address_args(addr: SocketAddr) -> [OsString; 4] {
    [
        "--address".into(),
        addr.ip().to_string().into(),
        "--port".into(),
        addr.port().to_string().into(),
    ]
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "status unknown".into(),
    }
}

/// A loopback or namespace-local address with a free TCP port, chosen by
/// the kernel (bound, then released: another process could take it in
/// between, which the caller sees as a failure to start).
#[cfg(feature = "migrate")]
pub(crate) fn free_port(ip: std::net::IpAddr) -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .map_err(|e| Error::io(format!("finding a free port on {ip}"), e))?;
    l.local_addr()
        .map_err(|e| Error::io("reading a bound address", e))
}
