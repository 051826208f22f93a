//! Moving a live process tree to another host over one TCP connection.
//!
//! The source calls [`send`], the destination [`receive`], each with its
//! end of a connected [`TcpStream`] (and each in its own network namespace
//! or host). Three strategies ([`Strategy`]):
//!
//! * [`Strategy::StopAndCopy`]: dump to a local directory, send it, restore.
//! * [`Strategy::PageServer`]: the destination runs `criu page-server`; the
//!   dump streams memory pages straight into it, the other images follow
//!   over the stream.
//! * [`Strategy::Lazy`] (post-copy): the dump leaves memory behind and
//!   serves it; the destination restores at once and `criu lazy-pages`
//!   fetches pages as the process touches them.
//!
//! # What happens to the source process
//!
//! The source tree is stopped (`SIGSTOP`, every task) when CRIU sends its
//! pre-dump notification (CRIU has started, and not yet frozen the tasks:
//! stopping earlier would add CRIU's start-up to the downtime), and dumped
//! with `leave_running`, so CRIU leaves it stopped, alive, on the source. It is killed only after the destination has reported a
//! successful restore (and, for `Lazy`, after the last page was served).
//! If anything fails before that point, in any strategy, the source tree
//! is sent `SIGCONT` and runs on where it was: nothing is lost. The
//! restored tree is likewise restored stopped and continued by
//! [`receive`]. (If the destination restore succeeded but the lazy page
//! transfer failed afterwards, the destination copy cannot run on; the
//! source is resumed and the error says so.)

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::child::RestoredChild;
use crate::client::Criu;
use crate::daemon::{free_port, DaemonConfig};
use crate::error::{Error, Result};
use crate::images::ImagesDir;
use crate::notify::{Event, Notification};
use crate::options::{NotifyFn, Options};
use crate::report::{DumpReport, RestoreReport};
use crate::transfer::{self, read_header, recv_message, send_message, write_header, TransferStats};
use crate::tree::{state, tree};

/// How memory gets to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Dump everything locally, send it, restore.
    StopAndCopy,
    /// Stream memory pages into a `criu page-server` on the destination.
    PageServer,
    /// Post-copy: restore first, fetch memory on demand.
    Lazy,
}

impl Strategy {
    /// All strategies, in the order they are usually compared.
    pub const ALL: [Strategy; 3] = [Strategy::StopAndCopy, Strategy::PageServer, Strategy::Lazy];

    /// The kebab-case name (`stop-and-copy`, `page-server`, `lazy`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::PageServer => "page-server",
            Strategy::Lazy => "lazy",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Strategy, String> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("unknown strategy {s:?} (stop-and-copy, page-server, lazy)"))
    }
}

/// Control messages between the two sides.
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Hello {
        strategy: Strategy,
    },
    PageServerReady {
        port: u16,
    },
    LazySource {
        addr: SocketAddr,
    },
    Restored {
        pid: i32,
        wall_us: u64,
        restore_time_us: Option<u64>,
    },
    Failed {
        message: String,
    },
    Done,
}

/// A hook that adjusts the options of a dump or restore.
type Customize<'a> = Box<dyn Fn(&mut Options<'_>) + Sync + 'a>;

/// The source side's settings.
pub struct SourceConfig<'a> {
    strategy: Strategy,
    work_dir: PathBuf,
    progress: Option<Box<dyn FnMut(u64, u64) + 'a>>,
    customize: Option<Customize<'a>>,
    lazy_timeout: Duration,
    deadline: Option<Duration>,
}

impl<'a> SourceConfig<'a> {
    /// `work_dir` must exist; the images are written to `work_dir/images`.
    pub fn new(strategy: Strategy, work_dir: impl AsRef<Path>) -> SourceConfig<'a> {
        SourceConfig {
            strategy,
            work_dir: work_dir.as_ref().to_path_buf(),
            progress: None,
            customize: None,
            lazy_timeout: Duration::from_secs(600),
            deadline: None,
        }
    }

    /// Called as images are sent: bytes done, bytes in total.
    pub fn progress(mut self, f: impl FnMut(u64, u64) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Adjusts the dump options (shell job, TCP, external resources...).
    /// The migration sets pid, images directory, log file, leave-running
    /// and the strategy's own options itself. A notification handler set
    /// here ([`Options::on_notify`]) sees every event of the dump, before
    /// the migration's own (which stops the tree at pre-dump), and may
    /// refuse any of them to fail the migration with the source running.
    pub fn customize(mut self, f: impl Fn(&mut Options<'_>) + Sync + 'a) -> Self {
        self.customize = Some(Box::new(f));
        self
    }

    /// Bounds the migration on this side: every wait on the peer (the
    /// stream's read and write timeouts), the dump (see
    /// [`Options::deadline`]) and the serving of lazy pages each get at most
    /// `deadline`. When one expires the source is resumed and the error
    /// says so.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self.lazy_timeout = self.lazy_timeout.min(deadline);
        self
    }

    /// How long the lazy dump may take to serve every page (default 600 s).
    pub fn lazy_timeout(mut self, t: Duration) -> Self {
        self.lazy_timeout = t;
        self
    }
}

/// The destination side's settings.
pub struct DestConfig<'a> {
    work_dir: PathBuf,
    customize: Option<Customize<'a>>,
    daemons: DaemonConfig,
    daemon_timeout: Duration,
    deadline: Option<Duration>,
}

impl<'a> DestConfig<'a> {
    /// `work_dir` must exist; the images arrive in `work_dir/images`.
    pub fn new(work_dir: impl AsRef<Path>) -> DestConfig<'a> {
        DestConfig {
            work_dir: work_dir.as_ref().to_path_buf(),
            customize: None,
            daemons: DaemonConfig::new(),
            daemon_timeout: Duration::from_secs(600),
            deadline: None,
        }
    }

    /// Adjusts the restore options.
    pub fn customize(mut self, f: impl Fn(&mut Options<'_>) + Sync + 'a) -> Self {
        self.customize = Some(Box::new(f));
        self
    }

    /// Bounds this side: every wait on the peer, the restore (see
    /// [`Options::deadline`]) and the daemons each get at most `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self.daemon_timeout = self.daemon_timeout.min(deadline);
        self
    }

    /// How the page server and lazy-pages daemon are started.
    pub fn daemons(mut self, d: DaemonConfig) -> Self {
        self.daemons = d;
        self
    }
}

/// What the source saw.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SourceReport {
    /// The strategy used.
    pub strategy: Strategy,
    /// The source root pid.
    pub pid: i32,
    /// The dump (statistics are absent for lazy dumps, see [`DumpReport`]).
    pub dump: DumpReport,
    /// Images sent over the stream.
    pub transfer: TransferStats,
    /// Memory pages sent to the page server (page-server strategy).
    pub page_server_bytes: u64,
    /// The root pid on the destination.
    pub restored_pid: i32,
    /// The destination's restore wall time.
    #[serde(serialize_with = "crate::report::micros")]
    pub restore_wall: Duration,
    /// CRIU's `restore_time` on the destination, when reported.
    pub restore_time_us: Option<u64>,
    /// From stopping the source to the destination's "restored".
    #[serde(serialize_with = "crate::report::micros")]
    pub stopped_to_restored: Duration,
    /// The whole migration, until the source was gone.
    #[serde(serialize_with = "crate::report::micros")]
    pub total: Duration,
}

/// What the destination did.
#[derive(Debug)]
#[non_exhaustive]
pub struct DestReport {
    /// The strategy used.
    pub strategy: Strategy,
    /// The restored root task, a child of the destination process.
    pub child: RestoredChild,
    /// The restore.
    pub restore: RestoreReport,
    /// Images received over the stream.
    pub transfer: TransferStats,
}

/// A stopped source tree: continued on drop unless killed.
struct StoppedTree {
    pids: Vec<i32>,
    killed: bool,
}

impl StoppedTree {
    fn stop(root: i32) -> Result<StoppedTree> {
        let pids = tree(root);
        let mut stopped = StoppedTree {
            pids: Vec::new(),
            killed: false,
        };
        for &p in &pids {
            kill(Pid::from_raw(p), Signal::SIGSTOP).map_err(|e| {
                Error::io(format!("stopping task {p} of the source tree"), e.into())
            })?;
            stopped.pids.push(p);
        }
        // Wait until each is really stopped, so nothing runs after this.
        let deadline = Instant::now() + Duration::from_secs(5);
        for &p in &pids {
            while !matches!(state(p), Some('T' | 't') | None) {
                if Instant::now() > deadline {
                    return Err(Error::Migration {
                        message: format!("task {p} did not stop within 5 s"),
                        source: None,
                    });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(stopped)
    }

    fn kill(mut self) {
        for &p in &self.pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        self.killed = true;
    }
}

impl Drop for StoppedTree {
    fn drop(&mut self) {
        if !self.killed {
            for &p in &self.pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
            }
        }
    }
}

fn continue_tree(root: i32) {
    for p in tree(root) {
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
}

fn migration(message: impl Into<String>, source: Option<Error>) -> Error {
    Error::Migration {
        message: message.into(),
        source: source.map(Box::new),
    }
}

enum LazyEvent {
    Ready,
    Finished(Box<Result<DumpReport>>),
}

/// Where the dump's notification handler leaves the stopped source tree.
type StopSlot = Arc<Mutex<Option<(StoppedTree, Instant)>>>;

/// The source dump's notification handler: the caller's own handler (set
/// through `customize`) first, then, at pre-dump, stopping the tree into
/// `slot`; at status-ready (lazy dumps) it tells `ready`.
fn stop_at_pre_dump<'a>(
    pid: i32,
    mut user: Option<Box<NotifyFn<'a>>>,
    slot: StopSlot,
    ready: Option<mpsc::Sender<LazyEvent>>,
) -> impl FnMut(Notification) -> ControlFlow<String> + 'a {
    move |n| {
        let pre_dump = matches!(n.event, Event::PreDump);
        let status_ready = matches!(n.event, Event::StatusReady);
        if let Some(user) = user.as_mut() {
            user(n)?;
        }
        if pre_dump {
            match StoppedTree::stop(pid) {
                Ok(t) => {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((t, Instant::now()));
                }
                Err(e) => return ControlFlow::Break(format!("stopping the source tree: {e}")),
            }
        }
        if status_ready {
            if let Some(r) = &ready {
                let _ = r.send(LazyEvent::Ready);
            }
        }
        ControlFlow::Continue(())
    }
}

/// Takes the stopped tree out of `slot` after a successful dump.
fn take_stopped(slot: &StopSlot) -> Result<(StoppedTree, Instant)> {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| {
            migration(
                "CRIU sent no pre-dump notification, so the source was never stopped and ran on after the dump; the images are stale",
                None,
            )
        })
}

/// Migrates the tree rooted at `pid` to the peer of `stream`, which runs
/// [`receive`]. See the module docs for what happens to the source.
pub fn send(
    criu: &Criu,
    pid: i32,
    stream: &mut TcpStream,
    mut cfg: SourceConfig<'_>,
) -> Result<SourceReport> {
    let start = Instant::now();
    let strategy = cfg.strategy;
    set_timeouts(stream, cfg.deadline)?;
    write_header(stream)?;
    send_message(stream, &Msg::Hello { strategy })?;
    let images = ImagesDir::create(cfg.work_dir.join("images"))?;
    let peer_ip = stream
        .peer_addr()
        .map_err(|e| Error::io("reading the peer address", e))?
        .ip();
    let local_ip = stream
        .local_addr()
        .map_err(|e| Error::io("reading the local address", e))?
        .ip();

    let page_server_port = if strategy == Strategy::PageServer {
        match recv_message(stream)? {
            Msg::PageServerReady { port } => Some(port),
            Msg::Failed { message } => return Err(migration(format!("the destination could not start its page server: {message}; the source was not touched"), None)),
            other => return Err(migration(format!("unexpected message {other:?}"), None)),
        }
    } else {
        None
    };

    let slot: StopSlot = Arc::new(Mutex::new(None));
    let customize = cfg.customize.take();
    let base = |o: &mut Options<'_>| {
        if let Some(c) = &customize {
            c(o);
        }
    };

    std::thread::scope(|scope| -> Result<SourceReport> {
        let mut lazy_thread = None;
        let mut lazy_addr = None;
        let dump = match strategy {
            Strategy::StopAndCopy | Strategy::PageServer => {
                let mut o = Options::new();
                base(&mut o);
                let user = o.notify.take();
                o.pid(pid)
                    .images_dir(&images)
                    .log_file("dump.log")
                    .leave_running(true)
                    .on_notify(stop_at_pre_dump(pid, user, slot.clone(), None));
                if let Some(d) = cfg.deadline {
                    o.deadline(d);
                }
                if let Some(port) = page_server_port {
                    o.page_server(SocketAddr::new(peer_ip, port));
                }
                let d = criu.dump(&mut o).map_err(|e| {
                    let _ = send_message(
                        stream,
                        &Msg::Failed {
                            message: e.to_string(),
                        },
                    );
                    migration("the dump failed; the source process was resumed", Some(e))
                })?;
                Some(d)
            }
            Strategy::Lazy => {
                let addr = free_port(local_ip)?;
                lazy_addr = Some(addr);
                let (tx, rx) = mpsc::channel();
                let images = &images;
                let base = &base;
                let slot = slot.clone();
                let handle = scope.spawn(move || {
                    let ready = tx.clone();
                    let mut o = Options::new();
                    base(&mut o);
                    let user = o.notify.take();
                    o.pid(pid)
                        .images_dir(images)
                        .log_file("dump.log")
                        .leave_running(true)
                        .lazy_pages(true)
                        .lazy_pages_address(addr)
                        .on_notify(stop_at_pre_dump(pid, user, slot, Some(ready)));
                    let r = Criu::new().dump(&mut o);
                    let _ = tx.send(LazyEvent::Finished(Box::new(r)));
                });
                match rx.recv() {
                    Ok(LazyEvent::Ready) => {}
                    Ok(LazyEvent::Finished(r)) if r.is_err() => {
                        let e = r.unwrap_err();
                        let _ = handle.join();
                        let _ = send_message(
                            stream,
                            &Msg::Failed {
                                message: e.to_string(),
                            },
                        );
                        return Err(migration(
                            "the lazy dump failed; the source process was resumed",
                            Some(e),
                        ));
                    }
                    _ => {
                        let _ = handle.join();
                        return Err(migration("the lazy dump ended without serving pages", None));
                    }
                }
                lazy_thread = Some((handle, rx));
                None
            }
        };

        // Unblocks a lazy dump that waits for a lazy-pages daemon that will
        // never come: connect to its page server and hang up.
        let abort_lazy = |lazy_thread: &mut Option<(
            std::thread::ScopedJoinHandle<'_, ()>,
            mpsc::Receiver<LazyEvent>,
        )>| {
            if let (Some((h, _)), Some(addr)) = (lazy_thread.take(), lazy_addr) {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                let _ = h.join();
            }
        };

        let (stopped, stopped_at) = match take_stopped(&slot) {
            Ok(s) => s,
            Err(e) => {
                abort_lazy(&mut lazy_thread);
                let _ = send_message(
                    stream,
                    &Msg::Failed {
                        message: e.to_string(),
                    },
                );
                return Err(e);
            }
        };

        let mut progress = cfg.progress.take();
        let sent = transfer::send_dir(
            stream,
            images.path(),
            progress.as_deref_mut().map(|p| p as _),
        );
        let sent = match sent {
            Ok(s) => s,
            Err(e) => {
                abort_lazy(&mut lazy_thread);
                return Err(migration(
                    "sending the images failed; the source process was resumed",
                    Some(e),
                ));
            }
        };
        if let Some(addr) = lazy_addr {
            send_message(stream, &Msg::LazySource { addr })?;
        }
        let (restored_pid, restore_wall, restore_time_us) = match recv_message(stream) {
            Ok(Msg::Restored {
                pid,
                wall_us,
                restore_time_us,
            }) => (pid, Duration::from_micros(wall_us), restore_time_us),
            Ok(Msg::Failed { message }) => {
                abort_lazy(&mut lazy_thread);
                return Err(migration(
                    format!("the destination failed: {message}; the source process was resumed"),
                    None,
                ));
            }
            Ok(other) => {
                abort_lazy(&mut lazy_thread);
                return Err(migration(
                    format!("unexpected message {other:?}; the source process was resumed"),
                    None,
                ));
            }
            Err(e) => {
                abort_lazy(&mut lazy_thread);
                return Err(migration(
                    "lost the destination before it restored; the source process was resumed",
                    Some(e),
                ));
            }
        };
        let stopped_to_restored = stopped_at.elapsed();
        let dump = match dump {
            Some(d) => d,
            None => {
                let (h, rx) = lazy_thread.take().expect("lazy dump thread");
                let r = rx.recv_timeout(cfg.lazy_timeout);
                let _ = h.join();
                match r.map(|ev| match ev {
                    LazyEvent::Finished(r) => Some(*r),
                    LazyEvent::Ready => None,
                }) {
                    Ok(Some(Ok(d))) => d,
                    Ok(Some(Err(e))) => {
                        return Err(migration(
                            "the destination restored, but serving its memory failed; the source process was resumed (the destination copy cannot run on)",
                            Some(e),
                        ))
                    }
                    _ => return Err(migration("serving lazy pages did not finish in time; the source process was resumed", None)),
                }
            }
        };
        // The destination runs; the source copy must go.
        stopped.kill();
        let _ = send_message(stream, &Msg::Done);
        let _ = stream.flush();
        let page_server_bytes = if strategy == Strategy::PageServer {
            dump.stats.map_or(0, |s| s.pages_written * 4096)
        } else {
            0
        };
        Ok(SourceReport {
            strategy,
            pid,
            dump,
            transfer: sent,
            page_server_bytes,
            restored_pid,
            restore_wall,
            restore_time_us,
            stopped_to_restored,
            total: start.elapsed(),
        })
    })
}

/// Receives a tree migrated by [`send`] and restores it as a child of this
/// process. On failure, the received images are removed and the source is
/// told, so that it resumes its copy.
pub fn receive(criu: &Criu, stream: &mut TcpStream, cfg: DestConfig<'_>) -> Result<DestReport> {
    let images_path = cfg.work_dir.join("images");
    let r = receive_inner(criu, stream, &cfg, &images_path);
    if let Err(e) = &r {
        let _ = send_message(
            stream,
            &Msg::Failed {
                message: e.to_string(),
            },
        );
        let _ = std::fs::remove_dir_all(&images_path);
        let _ = std::fs::remove_dir_all(cfg.work_dir.join("images.rest"));
    }
    r
}

fn receive_inner(
    criu: &Criu,
    stream: &mut TcpStream,
    cfg: &DestConfig<'_>,
    images_path: &Path,
) -> Result<DestReport> {
    set_timeouts(stream, cfg.deadline)?;
    read_header(stream)?;
    let strategy = match recv_message(stream)? {
        Msg::Hello { strategy } => strategy,
        other => return Err(migration(format!("expected a hello, got {other:?}"), None)),
    };
    let local_ip: IpAddr = stream
        .local_addr()
        .map_err(|e| Error::io("reading the local address", e))?
        .ip();
    let (images, transfer, lazy_daemon) = match strategy {
        Strategy::StopAndCopy => {
            let t = transfer::receive_dir(stream, images_path, None)?;
            (ImagesDir::open(images_path)?, t, None)
        }
        Strategy::PageServer => {
            let images = ImagesDir::create(images_path)?;
            let addr = free_port(local_ip)?;
            let server = cfg.daemons.page_server(&images, addr)?;
            send_message(stream, &Msg::PageServerReady { port: addr.port() })?;
            let rest = cfg.work_dir.join("images.rest");
            let t = transfer::receive_dir(stream, &rest, None)?;
            for entry in
                std::fs::read_dir(&rest).map_err(|e| Error::io("listing received images", e))?
            {
                let entry = entry.map_err(|e| Error::io("listing received images", e))?;
                std::fs::rename(entry.path(), images_path.join(entry.file_name()))
                    .map_err(|e| Error::io("moving received images", e))?;
            }
            let _ = std::fs::remove_dir(&rest);
            server.wait(cfg.daemon_timeout)?;
            (images, t, None)
        }
        Strategy::Lazy => {
            let t = transfer::receive_dir(stream, images_path, None)?;
            let images = ImagesDir::open(images_path)?;
            let addr = match recv_message(stream)? {
                Msg::LazySource { addr } => addr,
                other => {
                    return Err(migration(
                        format!("expected the lazy source address, got {other:?}"),
                        None,
                    ))
                }
            };
            let daemon = cfg.daemons.lazy_pages(&images, addr)?;
            (images, t, Some(daemon))
        }
    };
    let mut o = Options::new();
    if let Some(c) = &cfg.customize {
        c(&mut o);
    }
    o.images_dir(&images).log_file("restore.log");
    if let Some(d) = cfg.deadline {
        o.deadline(d);
    }
    if strategy == Strategy::Lazy {
        o.lazy_pages(true);
    }
    let (child, restore) = criu.restore_child(&mut o)?;
    continue_tree(child.pid());
    send_message(
        stream,
        &Msg::Restored {
            pid: child.pid(),
            wall_us: restore.wall_time.as_micros() as u64,
            restore_time_us: restore.stats.map(|s| s.restore_time.as_micros() as u64),
        },
    )?;
    if let Some(d) = lazy_daemon {
        d.wait(cfg.daemon_timeout)?;
    }
    match recv_message(stream) {
        Ok(Msg::Done) => {}
        Ok(other) => return Err(migration(format!("expected done, got {other:?}"), None)),
        Err(e) => {
            return Err(migration(
                "the source did not confirm the end of the migration",
                Some(e),
            ))
        }
    }
    Ok(DestReport {
        strategy,
        child,
        restore,
        transfer,
    })
}

/// Sets the stream's timeouts from `deadline`, and `TCP_NODELAY`: the
/// protocol's small messages (ready, restored, done) must not wait for a
/// delayed ACK.
fn set_timeouts(stream: &TcpStream, deadline: Option<Duration>) -> Result<()> {
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io("setting TCP_NODELAY on the stream", e))?;
    if let Some(d) = deadline {
        stream
            .set_read_timeout(Some(d))
            .and_then(|()| stream.set_write_timeout(Some(d)))
            .map_err(|e| Error::io("setting the stream's timeouts", e))?;
    }
    Ok(())
}
