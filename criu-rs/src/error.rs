//! Errors: what went wrong, in which operation, for which pid, and what CRIU's
//! log said about it.

use std::fmt;
use std::io;

use nix::errno::Errno;

/// The libcriu request an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Operation {
    /// `criu check`.
    Check,
    /// Asking the binary for its version.
    Version,
    /// Asking which optional features the kernel and CRIU support.
    FeatureCheck,
    /// A checkpoint.
    Dump,
    /// A single memory pre-dump.
    PreDump,
    /// Iterative pre-dumps followed by a dump.
    DumpIters,
    /// A restore (detached from the caller).
    Restore,
    /// A restore whose root task becomes the caller's child.
    RestoreChild,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Check => "check",
            Operation::Version => "version",
            Operation::FeatureCheck => "feature check",
            Operation::Dump => "dump",
            Operation::PreDump => "pre-dump",
            Operation::DumpIters => "iterative dump",
            Operation::Restore => "restore",
            Operation::RestoreChild => "restore (as child)",
        })
    }
}

/// Where an error happened: the operation, the pid it concerned, and the
/// `Error (...)` lines CRIU wrote to its log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The operation, when the error came from one.
    pub operation: Option<Operation>,
    /// The pid the operation was about, when there was one.
    pub pid: Option<i32>,
    /// `Error (...)` lines of CRIU's log, without the harmless
    /// `RLIMIT_NOFILE` complaint CRIU prints on every run.
    pub log_errors: Vec<String>,
    /// Name of the log file inside the work directory, when one was read.
    pub log_file: Option<String>,
}

impl Context {
    pub(crate) fn new(operation: Operation, pid: Option<i32>) -> Context {
        Context {
            operation: Some(operation),
            pid,
            ..Context::default()
        }
    }

    /// A one-line rendering of the log lines, empty when there are none.
    fn log_suffix(&self) -> String {
        if self.log_errors.is_empty() {
            return String::new();
        }
        let file = self.log_file.as_deref().unwrap_or("log");
        format!(
            "\n  CRIU's {file} says:\n    {}",
            self.log_errors.join("\n    ")
        )
    }

    fn log_mentions(&self, needle: &str) -> bool {
        self.log_errors.iter().any(|l| l.contains(needle))
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.operation, self.pid) {
            (Some(op), Some(pid)) => write!(f, "{op} of pid {pid}"),
            (Some(op), None) => write!(f, "{op}"),
            (None, Some(pid)) => write!(f, "pid {pid}"),
            (None, None) => f.write_str("criu"),
        }
    }
}

/// Why an argument was rejected before CRIU was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKind {
    /// The value is malformed (a log file name with a `/`, an empty key...).
    Malformed,
    /// The process does not exist.
    NoSuchProcess,
    /// A path that must exist does not.
    NotFound,
    /// The images directory already holds a checkpoint.
    ImagesExist,
    /// The images directory holds no checkpoint.
    NoImages,
    /// A required option is missing.
    Missing,
    /// Two options cannot be combined.
    Conflict,
    /// A pid is being checkpointed by another call of this process.
    Busy,
}

/// The context of the variants that have one, by shared or mutable
/// reference (the match binds in the mode of the reference it is given).
macro_rules! context_of {
    ($error:expr) => {
        match $error {
            Error::Connect { ctx, .. }
            | Error::Communication { ctx }
            | Error::Refused { ctx, .. }
            | Error::Unsupported { ctx, .. }
            | Error::BadResponse { ctx }
            | Error::NotificationRefused { ctx, .. }
            | Error::Aborted { ctx, .. }
            | Error::DeadlineExceeded { ctx, .. } => Some(ctx),
            _ => None,
        }
    };
}

/// The error type of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libcriu could not start or connect to the `criu` service (is the
    /// binary installed, on `PATH`, and are we root?).
    #[error("{ctx}: cannot reach CRIU: {source}{}", .ctx.log_suffix())]
    Connect {
        /// Where it happened.
        ctx: Context,
        /// The OS error libcriu saw.
        source: io::Error,
    },
    /// The connection to CRIU broke while a request or response was in
    /// flight (CRIU may have crashed: see its log).
    #[error("{ctx}: the connection to CRIU broke mid-request{}", .ctx.log_suffix())]
    Communication {
        /// Where it happened.
        ctx: Context,
    },
    /// CRIU ran the request and reported failure.
    #[error("{ctx}: CRIU refused the request{}{}", errno_suffix(.errno), .ctx.log_suffix())]
    Refused {
        /// Where it happened.
        ctx: Context,
        /// CRIU's errno for the failure, when it sent one.
        errno: Option<Errno>,
    },
    /// The installed CRIU or kernel does not support what was asked.
    #[error("{ctx}: not supported here: {what}{}", .ctx.log_suffix())]
    Unsupported {
        /// Where it happened.
        ctx: Context,
        /// What is missing.
        what: String,
    },
    /// CRIU answered something libcriu did not expect (a version mismatch
    /// between libcriu and the binary is the usual cause).
    #[error("{ctx}: unexpected response from CRIU{}", .ctx.log_suffix())]
    BadResponse {
        /// Where it happened.
        ctx: Context,
    },
    /// The notification closure refused an event, which failed the operation.
    #[error("{ctx}: the notification handler refused `{event}`: {reason}{}", .ctx.log_suffix())]
    NotificationRefused {
        /// Where it happened.
        ctx: Context,
        /// CRIU's name of the event (`post-dump`, ...).
        event: String,
        /// What the handler said.
        reason: String,
    },
    /// The `dump_iters` closure asked to abort.
    #[error("{ctx}: aborted by the caller after {iterations} pre-dump iteration(s)")]
    Aborted {
        /// Where it happened.
        ctx: Context,
        /// How many pre-dumps had completed.
        iterations: u32,
    },
    /// The operation's deadline ([`crate::Options::deadline`]) passed: CRIU
    /// was killed and reaped.
    #[error("{ctx}: the deadline of {deadline:?} passed; {outcome}{}", .ctx.log_suffix())]
    DeadlineExceeded {
        /// Where it happened.
        ctx: Context,
        /// The deadline that passed.
        deadline: std::time::Duration,
        /// What was done about it, and what became of the tasks.
        outcome: String,
    },
    /// An argument was rejected before CRIU was called.
    #[error("{}invalid argument: {message}", op_prefix(.operation))]
    InvalidArgument {
        /// The operation it was meant for, if any.
        operation: Option<Operation>,
        /// The kind of problem.
        kind: InvalidKind,
        /// What is wrong, in words.
        message: String,
    },
    /// An image file could not be decoded.
    #[error("bad image {file}: {message}")]
    BadImage {
        /// The file's name.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// A CRIU daemon (page server, lazy-pages) failed; the message quotes
    /// its log.
    #[error("{message}")]
    Daemon {
        /// What happened, with the daemon's `Error (...)` lines.
        message: String,
    },
    /// Sending or receiving images failed (truncated stream, checksum
    /// mismatch, a name escaping the target, the peer's failure...).
    #[error("image transfer: {message}")]
    Transfer {
        /// What kind of failure.
        kind: TransferKind,
        /// What went wrong.
        message: String,
        /// The I/O error behind it, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// A migration failed: at which [`Step`], what became of the source
    /// process ([`SourceState`]), and in words (see [`MigrationError`]).
    /// Every error of `criu::migrate::send` and `receive` is one, with the
    /// error of the step behind it as its source.
    #[error("migration: {error}{}", .source.as_ref().map(|e| format!("\n  because: {e}")).unwrap_or_default())]
    Migration {
        /// The step, the source's state, what happened.
        error: MigrationError,
        /// The error behind it, if any.
        #[source]
        source: Option<Box<Error>>,
    },
    /// The secure channel of a migration could not be set up (see
    /// `criu::tls`): the peer was refused (no certificate, one from another
    /// CA, an expired one, not TLS at all, too slow), or it refused ours,
    /// or the PEM files could not be used. Nothing was sent or received.
    #[error("TLS: {message}{}", .source.as_ref().map(|e| format!("\n  because: {e}")).unwrap_or_default())]
    Tls {
        /// What kind of failure.
        kind: TlsKind,
        /// What went wrong, and what to do about it.
        message: String,
        /// The TLS or I/O error behind it, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// An I/O error outside CRIU (creating directories, reading logs...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// What kind of failure an [`Error::Transfer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransferKind {
    /// The stream ended before the transfer did.
    Truncated,
    /// The peer sent nothing within the stream's timeout.
    TimedOut,
    /// The stream failed (reset, broken pipe...): see the I/O error.
    Stream,
    /// The peer does not speak the image stream (bad magic).
    NotAStream,
    /// What arrived is damaged: a checksum, a size or a total does not
    /// match, or a frame is malformed.
    Corrupt,
    /// The peer sent something the protocol does not allow here (a
    /// message where a file was due, an unknown message).
    Protocol,
    /// Refused by the receiver's [`crate::transfer::Limits`] (file count,
    /// sizes, free space).
    Limit,
    /// A name that would escape the target directory, or a file sent
    /// twice.
    UnsafeName,
    /// The target directory exists already, or was replaced meanwhile.
    TargetExists,
}

/// What kind of failure an [`Error::Tls`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsKind {
    /// The peer's certificate does not chain to our CA, is not valid, or
    /// is missing.
    Untrusted,
    /// The peer's certificate has expired, or is not valid yet.
    Expired,
    /// The peer's certificate does not name the host this end expects
    /// (`TlsConfig::peer_name`).
    WrongName,
    /// The peer does not speak TLS 1.3 (a plain TCP client, another
    /// protocol).
    NotTls,
    /// The peer refused us (a TLS alert): most likely our certificate.
    RefusedByPeer,
    /// The peer hung up during the handshake (it may have refused our
    /// certificate, or does not speak TLS).
    HungUp,
    /// The handshake did not complete within its deadline.
    TimedOut,
    /// The connection failed during the handshake.
    Connection,
    /// This end's own files or settings cannot be used (PEM files, a key
    /// that does not go with its certificate, a bad host name).
    Config,
    /// Anything else.
    Other,
}

/// A step of a migration, where it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Step {
    /// Readying the stream and agreeing on the strategy (the header, the
    /// hello, the work directory, CRIU's own connections), before the
    /// source was touched.
    Handshake,
    /// Stopping the source tree.
    Stop,
    /// The dump.
    Dump,
    /// Sending or receiving the images (and what a strategy sends with
    /// them).
    Transfer,
    /// Moving the service address of a tree's TCP connections (the
    /// caller's `AddressMove` hook).
    Connections,
    /// The destination's restore.
    Restore,
    /// Serving the memory of a lazy migration after the restore.
    LazyPages,
    /// The end: the source's `Done` and the destination's `Kept`.
    Confirm,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Handshake => "handshake",
            Step::Stop => "stop",
            Step::Dump => "dump",
            Step::Transfer => "transfer",
            Step::Connections => "connections",
            Step::Restore => "restore",
            Step::LazyPages => "lazy pages",
            Step::Confirm => "confirm",
        })
    }
}

/// What became of the source process tree when a migration failed, as
/// the side that reports the error knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum SourceState {
    /// Never stopped: it ran on throughout.
    Untouched,
    /// Stopped for the move, then continued: it runs on where it was, and
    /// no copy runs elsewhere.
    Resumed,
    /// Killed: the destination's copy runs (a failure after the
    /// destination confirmed it keeps its copy).
    Killed,
    /// Continued, and the destination may run its restored copy too (it
    /// did not confirm either way): check the destination before relying
    /// on one copy.
    PossiblyRunningTwice,
    /// Not known on this side (the destination's view: the source resumes
    /// its copy when it hears of the failure, which the broken stream may
    /// not carry).
    Unknown,
}

/// Why a migration failed: the step, what became of the source, and a
/// sentence that says both (the `Display`).
///
/// ```
/// use criu::{Error, SourceState};
///
/// fn report(e: &Error) {
///     match e.source_state() {
///         Some(SourceState::Untouched | SourceState::Resumed) => {
///             eprintln!("nothing moved, the process runs on here: {e}")
///         }
///         Some(SourceState::PossiblyRunningTwice) => {
///             eprintln!("check the destination, two copies may run: {e}")
///         }
///         _ => eprintln!("{e}"),
///     }
/// }
/// # report(&Error::io("x", std::io::Error::other("y")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationError {
    step: Step,
    source_state: SourceState,
    message: String,
    cancelled: bool,
    time_limit: bool,
}

impl MigrationError {
    /// A failure at `step`, with the source in `source_state`, in words.
    pub fn new(step: Step, source_state: SourceState, message: impl Into<String>) -> Self {
        MigrationError {
            step,
            source_state,
            message: message.into(),
            cancelled: false,
            time_limit: false,
        }
    }

    /// The same, marked as a migration stopped by its overall time limit
    /// (the destination's `DestConfig::time_limit`).
    pub fn time_limit_exceeded(mut self) -> Self {
        self.time_limit = true;
        self
    }

    /// Whether the migration was stopped by its overall time limit.
    pub fn is_time_limit_exceeded(&self) -> bool {
        self.time_limit
    }

    /// The same, marked as the migration's cancellation rather than a
    /// failure.
    pub fn cancelled(mut self) -> Self {
        self.cancelled = true;
        self
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// What became of the source process.
    pub fn source_state(&self) -> SourceState {
        self.source_state
    }

    /// Whether the migration was cancelled (by its `Cancel` token), not
    /// failed.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// What happened, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.time_limit {
            f.write_str("the time limit passed: ")?;
        } else if self.cancelled {
            f.write_str("cancelled: ")?;
        }
        f.write_str(&self.message)
    }
}

fn errno_suffix(errno: &Option<Errno>) -> String {
    match errno {
        Some(e) => format!(" (errno {}: {})", *e as i32, e.desc()),
        None => String::new(),
    }
}

fn op_prefix(op: &Option<Operation>) -> String {
    op.map(|o| format!("{o}: ")).unwrap_or_default()
}

impl Error {
    pub(crate) fn invalid(
        operation: Option<Operation>,
        kind: InvalidKind,
        message: impl Into<String>,
    ) -> Error {
        Error::InvalidArgument {
            operation,
            kind,
            message: message.into(),
        }
    }

    /// An I/O error outside CRIU: `what` was being done when `source`
    /// happened. For implementers of their own [`crate::transfer::Transport`]
    /// (or of steps around a migration) whose failures should read like
    /// the crate's own:
    ///
    /// ```
    /// let e = criu::Error::io(
    ///     "opening the vsock stream to the destination",
    ///     std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    /// );
    /// assert!(matches!(e, criu::Error::Io { .. }));
    /// ```
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// A migration error (`error`), caused by `source` if given.
    pub fn migration(error: MigrationError, source: Option<Error>) -> Error {
        Error::Migration {
            error,
            source: source.map(Box::new),
        }
    }

    /// A migration error marked as the migration's cancellation; any
    /// other error as it is.
    #[cfg(feature = "migrate")]
    pub(crate) fn into_cancelled(self) -> Error {
        match self {
            Error::Migration { error, source } => Error::Migration {
                error: error.cancelled(),
                source,
            },
            other => other,
        }
    }

    /// A migration error marked as stopped by its time limit (not as
    /// cancelled); any other error as it is.
    #[cfg(feature = "migrate")]
    pub(crate) fn into_time_limit_exceeded(self) -> Error {
        match self {
            Error::Migration { mut error, source } => {
                error.cancelled = false;
                Error::Migration {
                    error: error.time_limit_exceeded(),
                    source,
                }
            }
            other => other,
        }
    }

    /// Whether this is the error of a cancelled migration.
    pub fn is_cancelled(&self) -> bool {
        self.migration_error()
            .is_some_and(MigrationError::is_cancelled)
    }

    /// The migration's own error (step, the source's state), for errors of
    /// a migration.
    pub fn migration_error(&self) -> Option<&MigrationError> {
        match self {
            Error::Migration { error, .. } => Some(error),
            _ => None,
        }
    }

    /// What became of the source process, for errors of a migration.
    pub fn source_state(&self) -> Option<SourceState> {
        self.migration_error().map(MigrationError::source_state)
    }

    /// The error behind a migration error (the dump's, the transfer's...),
    /// or `self` for any other error.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Migration {
                source: Some(inner),
                ..
            } => inner.cause(),
            other => other,
        }
    }

    /// The context (operation, pid, CRIU log lines), for errors from CRIU.
    pub fn context(&self) -> Option<&Context> {
        context_of!(self)
    }

    pub(crate) fn context_mut(&mut self) -> Option<&mut Context> {
        context_of!(self)
    }

    /// The operation the error belongs to.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::InvalidArgument { operation, .. } => *operation,
            _ => self.context().and_then(|c| c.operation),
        }
    }

    /// The `Error (...)` lines of CRIU's log (empty when none were read).
    pub fn log_errors(&self) -> &[String] {
        self.context().map_or(&[], |c| &c.log_errors)
    }

    /// CRIU's errno, when CRIU refused the request and sent one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Refused { errno, .. } => *errno,
            _ => None,
        }
    }

    /// The kind of invalid argument, for errors found before calling CRIU.
    pub fn invalid_kind(&self) -> Option<InvalidKind> {
        match self {
            Error::InvalidArgument { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// A restore failed because a pid it needs is taken by a live process
    /// (CRIU restores tasks with their original pids).
    pub fn is_pid_in_use(&self) -> bool {
        match self {
            Error::Refused { ctx, errno } => {
                *errno == Some(Errno::EEXIST)
                    || ctx.log_mentions("File exists")
                    || ctx.log_mentions("is already taken")
            }
            _ => false,
        }
    }

    /// The process, file or directory named in the request does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.invalid_kind(),
            Some(InvalidKind::NoSuchProcess | InvalidKind::NotFound | InvalidKind::NoImages)
        ) || self.errno() == Some(Errno::ESRCH)
            || self.errno() == Some(Errno::ENOENT)
    }

    /// CRIU, libcriu or the kernel lacks what was asked for.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// The kind of a failed transfer.
    pub fn transfer_kind(&self) -> Option<TransferKind> {
        match self {
            Error::Transfer { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The kind of a failed TLS setup.
    pub fn tls_kind(&self) -> Option<TlsKind> {
        match self {
            Error::Tls { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The operation's deadline passed.
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, Error::DeadlineExceeded { .. })
    }

    /// CRIU could not be started or reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps `Error (...)` lines from a CRIU log, minus known harmless ones.
pub(crate) fn error_lines(log: &str) -> Vec<String> {
    const MAX: usize = 20;
    let mut lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("BUG at"))
        .filter(|l| !l.contains("RLIMIT_NOFILE"))
        .map(|l| l.trim().to_string())
        .collect();
    if lines.len() > MAX {
        let dropped = lines.len() - MAX;
        lines.drain(..dropped);
        lines.insert(0, format!("({dropped} earlier error lines omitted)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_drops_rlimit_and_keeps_errors() {
        let log = "(00.001) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.002) Warn  (criu/x.c:1): whatever\n\
                   (00.003) Error (criu/cr-restore.c:1234): Can't fork for 42: File exists\n";
        let lines = error_lines(log);
        assert_eq!(
            lines,
            vec!["(00.003) Error (criu/cr-restore.c:1234): Can't fork for 42: File exists"]
        );
    }

    #[test]
    fn display_names_operation_pid_and_log() {
        let mut ctx = Context::new(Operation::Restore, Some(42));
        ctx.log_errors = vec!["Error (x): Can't fork for 42: File exists".into()];
        ctx.log_file = Some("restore.log".into());
        let e = Error::Refused {
            ctx,
            errno: Some(Errno::EEXIST),
        };
        let s = e.to_string();
        assert!(s.starts_with("restore of pid 42: CRIU refused the request (errno 17"));
        assert!(s.contains("restore.log says"));
        assert!(s.contains("Can't fork for 42"));
        assert!(e.is_pid_in_use());
        assert!(!e.is_not_found());
    }
}
