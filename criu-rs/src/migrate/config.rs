//! The settings of each side of a migration.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::cancel::Cancel;
use super::choice::{PreCopyPolicy, Strategy};
use super::connections::Connections;
use super::workdir::WorkDir;
use crate::daemon::DaemonConfig;
use crate::options::Options;
use crate::tls::TlsFiles;
use crate::transfer::Limits;

/// A hook that adjusts the options of a dump or restore.
pub(super) type Customize<'a> = Box<dyn Fn(&mut Options<'_>) + Sync + 'a>;

/// The source side's settings; [`SourceConfig::new`] keeps the images in
/// memory.
pub struct SourceConfig<'a> {
    pub(super) strategy: Strategy,
    pub(super) work_dir: WorkDir,
    pub(super) progress: Option<Box<dyn FnMut(u64, u64) + 'a>>,
    pub(super) customize: Option<Customize<'a>>,
    pub(super) lazy_timeout: Duration,
    pub(super) deadline: Option<Duration>,
    pub(super) criu_addresses: Option<(IpAddr, IpAddr)>,
    pub(super) criu_tls: Option<TlsFiles>,
    pub(super) connections: Option<Connections<'a>>,
    pub(super) cancel: Cancel,
    pub(super) pre_copy: PreCopyPolicy,
}

impl<'a> SourceConfig<'a> {
    /// The images are kept in memory: a private (0700) directory of the
    /// crate's on a tmpfs (`/dev/shm`), removed when [`super::send`]
    /// returns. No disk in the path; the memory used is the images' size
    /// (for stop-and-copy, about the tree's memory). To keep them on a
    /// file system of your choice, see [`SourceConfig::work_dir`].
    pub fn new(strategy: Strategy) -> SourceConfig<'a> {
        SourceConfig {
            strategy,
            work_dir: WorkDir::InMemory,
            progress: None,
            customize: None,
            lazy_timeout: Duration::from_secs(600),
            deadline: None,
            criu_addresses: None,
            criu_tls: None,
            connections: None,
            cancel: Cancel::new(),
            pre_copy: PreCopyPolicy::default(),
        }
    }

    /// When [`Strategy::PreCopy`] stops its passes (the default:
    /// [`PreCopyPolicy::default`]); other strategies ignore it.
    pub fn pre_copy(mut self, policy: PreCopyPolicy) -> Self {
        self.pre_copy = policy;
        self
    }

    /// Cancels the migration when `cancel` is (see [`Cancel`] for what
    /// happens to the source then).
    pub fn cancel(mut self, cancel: &Cancel) -> Self {
        self.cancel = cancel.clone();
        self
    }

    /// Writes the images to `dir/images` instead of memory, and leaves
    /// them there (`dir` must exist, `dir/images` must not).
    pub fn work_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.work_dir = WorkDir::Chosen(dir.as_ref().to_path_buf());
        self
    }

    /// Moves the tree's established TCP connections, and the service
    /// address they use, with it (see [`Connections`] and
    /// [`super::connections`] for the order of the steps). The destination
    /// must set [`DestConfig::tcp_established`].
    pub fn connections(mut self, c: Connections<'a>) -> Self {
        self.connections = Some(c);
        self
    }

    /// Called as images are sent: bytes done, bytes in total. The total is
    /// 0 while it is not known yet: stop-and-copy sends the pages while
    /// the dump still writes them, and knows the total once the dump is
    /// over.
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
    /// stream's read and write timeouts, where the stream has them), the
    /// dump (see [`Options::deadline`]) and the serving of lazy pages each
    /// get at most `deadline`. When one expires the source is resumed and
    /// the error says so.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self.lazy_timeout = self.lazy_timeout.min(deadline);
        self
    }

    /// How long the lazy dump may take to serve every page once the
    /// destination has restored (default 600 s). Then the dump is ended
    /// (its CRIU killed if it is still serving a stalled daemon), the
    /// source resumed, and the destination told to drop its copy.
    pub fn lazy_timeout(mut self, t: Duration) -> Self {
        self.lazy_timeout = t;
        self
    }

    /// The addresses of CRIU's own connections, beside the stream: `local`
    /// is this host's (a lazy dump serves its pages there), `peer` the
    /// destination's (where its page server listens). Needed by the
    /// page-server and lazy strategies when the stream is not TCP (a TCP
    /// stream's two ends are the default) and carries no connections of
    /// CRIU's itself (see [`Transport::side_channels`](crate::transfer::Transport::side_channels),
    /// which takes precedence).
    pub fn criu_addresses(mut self, local: IpAddr, peer: IpAddr) -> Self {
        self.criu_addresses = Some((local, peer));
        self
    }

    /// CRIU's own connections (page server, lazy pages) use CRIU's TLS with
    /// these files, where the stream does not carry them itself (a
    /// `crate::tls::TlsStream` does, through rustls); name files here for
    /// another secure stream (SSH...), or CRIU's connections carry memory
    /// in clear.
    pub fn criu_tls(mut self, files: TlsFiles) -> Self {
        self.criu_tls = Some(files);
        self
    }
}

/// How long [`super::receive`] may take in all by default (see
/// [`DestConfig::time_limit`]).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(3600);

/// The destination side's settings. [`DestConfig::new`] and `default()`
/// are the same: images in memory, default limits, no deadline.
pub struct DestConfig<'a> {
    pub(super) work_dir: WorkDir,
    pub(super) customize: Option<Customize<'a>>,
    pub(super) daemons: DaemonConfig,
    pub(super) daemon_timeout: Duration,
    pub(super) deadline: Option<Duration>,
    pub(super) criu_address: Option<IpAddr>,
    pub(super) criu_peer: Option<IpAddr>,
    pub(super) criu_tls: Option<TlsFiles>,
    pub(super) limits: Limits,
    pub(super) time_limit: Duration,
    pub(super) tcp_established: bool,
    pub(super) restore_lazily: Option<bool>,
    pub(super) cancel: Cancel,
}

impl Default for DestConfig<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> DestConfig<'a> {
    /// The images arrive in memory: a private (0700) directory of the
    /// crate's on a tmpfs (`/dev/shm`), removed when [`super::receive`]
    /// returns (the restored tree needs none of them by then). To keep them
    /// on a file system of your choice, see [`DestConfig::work_dir`].
    pub fn new() -> DestConfig<'a> {
        DestConfig {
            work_dir: WorkDir::InMemory,
            customize: None,
            daemons: DaemonConfig::new(),
            daemon_timeout: Duration::from_secs(600),
            deadline: None,
            criu_address: None,
            criu_peer: None,
            criu_tls: None,
            limits: Limits::default(),
            time_limit: DEFAULT_TIME_LIMIT,
            tcp_established: false,
            restore_lazily: None,
            cancel: Cancel::new(),
        }
    }

    /// Whether the restore leaves the tree's memory to a lazy-pages
    /// daemon of this host reading the received images, where CRIU can
    /// restore lazily ([`Features::lazy_pages`](crate::Features)): the
    /// tree resumes as soon as it is rebuilt, and its memory is filled in
    /// as it touches it and in the background, instead of all of it
    /// before it resumes (about a second per GiB on the machines this
    /// was measured on). The copy is reported running, and the source
    /// released, only once every page is in, so the source stays whole
    /// until then; nothing crosses the network after the resume (unlike
    /// [`Strategy::Lazy`](super::Strategy::Lazy)). Until then the tree
    /// waits on its first touch of each page not yet filled. For the
    /// strategies whose images arrive whole before the restore:
    /// stop-and-copy and pre-copy. By default pre-copy does (most of its
    /// memory arrived while the source still ran) and stop-and-copy does
    /// not.
    pub fn restore_lazily(self, on: bool) -> Self {
        DestConfig {
            restore_lazily: Some(on),
            ..self
        }
    }

    /// Cancels the migration when `cancel` is: what was received is
    /// removed, a half-restored or restored tree killed, and the source
    /// told (see [`Cancel`]).
    pub fn cancel(self, cancel: &Cancel) -> Self {
        DestConfig {
            cancel: cancel.clone(),
            ..self
        }
    }

    /// Receives the images into `dir/images` instead of memory (`dir` must
    /// exist, `dir/images` must not); they stay there after a successful
    /// migration and are removed after a failed one.
    pub fn work_dir(self, dir: impl AsRef<Path>) -> Self {
        DestConfig {
            work_dir: WorkDir::Chosen(dir.as_ref().to_path_buf()),
            ..self
        }
    }

    /// Restores established TCP connections (the counterpart of
    /// [`SourceConfig::connections`]; the service address must be on this
    /// host before the restore, which the source's hook sees to).
    pub fn tcp_established(self, on: bool) -> Self {
        DestConfig {
            tcp_established: on,
            ..self
        }
    }

    /// Adjusts the restore options.
    pub fn customize(self, f: impl Fn(&mut Options<'_>) + Sync + 'a) -> Self {
        let customize: Option<Customize<'a>> = Some(Box::new(f));
        DestConfig { customize, ..self }
    }

    /// How the page server and lazy-pages daemon are started.
    pub fn daemons(self, daemons: DaemonConfig) -> Self {
        DestConfig { daemons, ..self }
    }

    /// What the source may send: file count, file and total sizes, and how
    /// long it may stay silent when no deadline is set (see [`Limits`];
    /// the defaults apply otherwise: a silent source is given up after
    /// 120 s).
    pub fn limits(self, limits: Limits) -> Self {
        DestConfig { limits, ..self }
    }

    /// Bounds this side: every wait on the peer, the restore (see
    /// [`Options::deadline`]) and the daemons each get at most `deadline`.
    pub fn deadline(self, deadline: Duration) -> Self {
        DestConfig {
            deadline: Some(deadline),
            daemon_timeout: self.daemon_timeout.min(deadline),
            ..self
        }
    }

    /// Bounds the whole receive, from the source's hello to its verdict
    /// (default [`DEFAULT_TIME_LIMIT`], one hour): the idle timeout and
    /// [`DestConfig::deadline`] bound each wait, so a source that sends a
    /// byte now and then could otherwise hold the destination for ever.
    /// When it passes, the receive ends as a cancelled one does (what
    /// arrived is removed, a restored tree killed, the source told) with a
    /// migration error that
    /// [`is_time_limit_exceeded`](crate::MigrationError::is_time_limit_exceeded).
    pub fn time_limit(self, limit: Duration) -> Self {
        DestConfig {
            time_limit: limit,
            ..self
        }
    }

    /// The source host's address for CRIU's own connections: the lazy
    /// strategy fetches pages from this host only, whatever port the
    /// source names. A TCP stream's peer is the default; a stream without
    /// IP addresses needs it for the lazy strategy (else it is refused).
    pub fn criu_peer(self, peer: IpAddr) -> Self {
        DestConfig {
            criu_peer: Some(peer),
            ..self
        }
    }

    /// This host's address for CRIU's own connections (the page server
    /// listens there). Needed by the page-server strategy when the stream
    /// is not TCP (a TCP stream's local end is the default).
    pub fn criu_address(self, local: IpAddr) -> Self {
        DestConfig {
            criu_address: Some(local),
            ..self
        }
    }

    /// The page server and lazy-pages daemon use CRIU's TLS with these
    /// files, where the stream does not carry their connections itself
    /// (see [`SourceConfig::criu_tls`]; a `crate::tls::TlsStream` does,
    /// through rustls).
    pub fn criu_tls(self, files: TlsFiles) -> Self {
        DestConfig {
            criu_tls: Some(files),
            ..self
        }
    }
}
