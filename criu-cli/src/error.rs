//! What a failed command prints and how it exits: the cause, then a line
//! that says what to do about it, and one of the documented exit codes.

use std::fmt;
use std::process::ExitCode;

use criu::migrate::Step;

/// The exit codes, as `criu-rs --help` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything not below (a file that cannot be read or written...).
    Failure = 1,
    /// 2: the command line is wrong (clap uses 2 for its own errors too).
    Usage = 2,
    /// 3: CRIU failed or refused (dump, restore, check); its log's error
    /// lines are printed.
    Criu = 3,
    /// 4: the other host or the registry could not be reached, or refused
    /// us (TLS, credentials), or broke off.
    Peer = 4,
    /// 5: interrupted by a signal; what became of the process is printed.
    Interrupted = 5,
    /// 6: an image, a JSON document or an archive is malformed.
    BadInput = 6,
    /// 7: the destination's pre-flight check refused the move; nothing
    /// was stopped.
    Refused = 7,
    /// 8: the tree was restored here, but the source never confirmed
    /// that it stopped its own copy: two copies may run.
    Unconfirmed = 8,
}

/// The text `--help` shows for the exit codes.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure not listed below (a file that cannot be read or written, ...)
  2  bad command line
  3  CRIU failed or refused (its log's error lines are printed)
  4  the other host or the registry was unreachable, refused us, or broke off
  5  interrupted by SIGINT, SIGTERM or SIGHUP (the source process resumed)
  6  malformed input: an image, crit JSON, or an archive
  7  the destination refused the move at pre-flight (nothing was stopped)
  8  restored, but the source never confirmed it stopped its copy: check it";

/// A command's failure.
#[derive(Debug)]
pub struct CliError {
    /// How the command exits.
    pub exit: Exit,
    /// What went wrong.
    pub message: String,
    /// What to do about it, when we can tell.
    pub hint: Option<String>,
    /// For a failed migration: its step, what became of the source, and
    /// whether it was cancelled.
    pub migration: Option<criu::MigrationError>,
    /// The signal that interrupted the command, if one did.
    pub signal: Option<String>,
}

impl CliError {
    /// A failure of kind `exit`.
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
            hint: None,
            migration: None,
            signal: None,
        }
    }

    /// A bad command line.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    /// Malformed input.
    pub fn bad_input(message: impl Into<String>) -> CliError {
        CliError::new(Exit::BadInput, message)
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> CliError {
        CliError::new(Exit::Failure, format!("{what}: {e}"))
    }

    /// Adds (or replaces) the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// Prints `error: ...` and `hint: ...` on stderr.
    pub fn print(&self) {
        eprintln!("error: {}", self.message);
        if let Some(h) = &self.hint {
            eprintln!("hint: {h}");
        }
    }

    /// The `--json` row of a failure: `{"error": {"exit", "message",
    /// "hint", "signal", "step", "source_state", "cancelled"}}`, the last
    /// three for a migration only (`step` and `source_state` in criu-rs's
    /// kebab-case names: `dump`, `resumed`...), absent fields `null`.
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.migration.as_ref();
        serde_json::json!({
            "error": {
                "exit": self.exit as u8,
                "message": self.message,
                "hint": self.hint,
                "signal": self.signal,
                "step": m.map(|m| m.step()),
                "source_state": m.map(|m| m.source_state()),
                "cancelled": m.map(|m| m.is_cancelled()),
            }
        })
    }

    /// The process's exit status.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit as u8)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Which errors a [`LOG_HINTS`] entry applies to.
#[derive(Clone, Copy)]
enum Of {
    /// Any error that quotes CRIU (a request's log, a daemon's message).
    Any,
    /// Only a restore's (its log's wording is too common to read more
    /// into it elsewhere: a lazy-pages daemon whose source went away says
    /// "No such file or directory" too).
    Restore,
}

/// CRIU's log lines that have a known fix, and the fix.
const LOG_HINTS: &[(&str, Of, &str)] = &[
    (
        "--tcp-established",
        Of::Any,
        "the tree has established TCP connections: add --tcp-established (to dump and restore alike)",
    ),
    (
        "--ext-unix-sk",
        Of::Any,
        "the tree has a unix socket connected outside it: add --ext-unix-sk",
    ),
    (
        "file-locks",
        Of::Any,
        "the tree holds file locks: add --file-locks (to dump and restore alike)",
    ),
    (
        "is outside of its pid namespace",
        Of::Any,
        "the tree's session leader is outside it: add --shell-job, or start the process with setsid",
    ),
    (
        "shell-job",
        Of::Any,
        "the tree belongs to a terminal session: add --shell-job, or start it with setsid",
    ),
    (
        "Locking network failed",
        Of::Any,
        "CRIU could not lock the network (iptables missing?): install iptables, or pass --network-lock nftables or --network-lock skip",
    ),
    (
        "The --root option is required",
        Of::Any,
        "the tree has a mount namespace of its own: pass --root DIR, the directory that becomes its root (holding the tree's files at the same paths)",
    ),
    (
        "doesn't have a proper root mount",
        Of::Any,
        "the tree has a bind mount from outside its mount namespace: add --ext-mount-map MOUNTPOINT:KEY (and restore with --ext-mount-map KEY:DIR), or --auto-ext-mnt to dump and restore alike",
    ),
    (
        "is autodetected external mount",
        Of::Any,
        "the dump found the tree's external mounts itself (--auto-ext-mnt): restore with --auto-ext-mnt too",
    ),
    (
        "No mapping for",
        Of::Any,
        "the checkpoint has an external mount: restore with --ext-mount-map KEY:DIR, KEY as the dump's --ext-mount-map named it",
    ),
    (
        "Unaccessible path opened",
        Of::Any,
        "a file's name now leads to another file: for a device node recreated since (by udev, say), add --evasive-devices",
    ),
    (
        "has bad size",
        Of::Any,
        "a file the process had open changed size since the dump: restore the file as it was, or give the process its own output file",
    ),
    (
        "No such file or directory",
        Of::Restore,
        "a file the checkpoint needs is missing here: the restore needs the tree's files at the same paths",
    ),
];

/// The hint for a lazy-pages daemon that failed while fetching pages:
/// its log then says the page server closed the connection and "doesn't
/// answer: No such file or directory", which is no missing file.
const LAZY_SOURCE_LOST: &str = "the lazy-pages daemon lost the source while fetching pages \
     (the send was interrupted, or the link to it broke): the restored copy was killed here, \
     and the source resumes its own; check that it runs there, then move it again";

/// The hint of a failed migration that its step says more about than
/// any log line.
fn migration_hint(m: &criu::MigrationError, cause: &criu::Error) -> Option<String> {
    match (m.step(), cause) {
        (Step::LazyPages, criu::Error::Daemon { .. }) => Some(LAZY_SOURCE_LOST.into()),
        _ => None,
    }
}

fn criu_hint(e: &criu::Error) -> Option<String> {
    if let Some(m) = e.migration_error() {
        if m.is_cancelled() {
            // The message says which signal, at which step, and what
            // became of the source: there is nothing to fix.
            return None;
        }
        if let Some(hint) = migration_hint(m, e.cause()) {
            return Some(hint);
        }
    }
    let e = e.cause();
    if e.is_connect() {
        return Some(
            "is CRIU installed (criu on PATH) and are you root? `criu-rs check` tells".into(),
        );
    }
    if e.is_pid_in_use() {
        return Some(
            "a pid of the checkpoint is taken here by a live process (CRIU restores pids as they \
             were): stop that process, or checkpoint a tree that is the init of its own PID \
             namespace (unshare --pid --fork --mount-proc)"
                .into(),
        );
    }
    if e.is_deadline_exceeded() {
        return Some("raise --deadline, or find in CRIU's log what it waited for".into());
    }
    match e.invalid_kind() {
        Some(criu::InvalidKind::ImagesExist) => {
            return Some("choose an empty (or new) --images-dir".into())
        }
        Some(criu::InvalidKind::NoSuchProcess) => return Some("check the pid: `ps -p PID`".into()),
        Some(criu::InvalidKind::NoImages) => {
            return Some("--images-dir must hold a checkpoint (from `criu-rs dump`)".into())
        }
        Some(criu::InvalidKind::NotFound) => return Some("check the path".into()),
        // Nothing from CRIU's log to go by.
        Some(_) => return None,
        None => {}
    }
    if matches!(e, criu::Error::Tls { .. }) {
        return Some(
            "both hosts need certificates signed by the CA of --tls-ca (see README, \
             \"Migrating between two machines\")"
                .into(),
        );
    }
    let lines = e.log_errors().join("\n");
    let text = format!("{e}\n{lines}");
    let restore = matches!(
        e.operation(),
        Some(criu::Operation::Restore | criu::Operation::RestoreChild)
    );
    LOG_HINTS
        .iter()
        .filter(|(_, of, _)| matches!(of, Of::Any) || restore)
        .find(|(needle, _, _)| text.contains(needle))
        .map(|(_, _, hint)| (*hint).to_string())
}

/// The exit code of an error from criu-rs, by its type: a migration's by
/// whether it was cancelled, then by the error of its step (or, for a
/// step's own failure, by the step).
fn criu_exit(e: &criu::Error) -> Exit {
    if e.is_cancelled() {
        return Exit::Interrupted;
    }
    match e {
        criu::Error::InvalidArgument { .. } => Exit::Usage,
        criu::Error::BadImage { .. } => Exit::BadInput,
        criu::Error::Tls { .. } | criu::Error::Transfer { .. } => Exit::Peer,
        criu::Error::Io { .. } => Exit::Failure,
        criu::Error::Migration {
            source: Some(s), ..
        } if !matches!(**s, criu::Error::Io { .. }) => criu_exit(s),
        criu::Error::Migration { error, .. } => match error.step() {
            Step::Handshake | Step::Transfer | Step::Confirm => Exit::Peer,
            Step::Connections => Exit::Failure,
            _ => Exit::Criu,
        },
        _ => Exit::Criu,
    }
}

impl From<criu::Error> for CliError {
    fn from(e: criu::Error) -> CliError {
        let mut message = e.to_string();
        let log = e.log_errors();
        if !log.is_empty() && !message.contains(&log[log.len() - 1]) {
            message.push_str("\nCRIU's log says:\n  ");
            message.push_str(&log.join("\n  "));
        }
        CliError {
            exit: criu_exit(&e),
            message,
            hint: criu_hint(&e),
            migration: e.migration_error().cloned(),
            signal: None,
        }
    }
}

impl From<criu_image::Error> for CliError {
    fn from(e: criu_image::Error) -> CliError {
        if let criu_image::ErrorKind::Io(io) = &e.kind {
            let what = e
                .path
                .as_ref()
                .map_or_else(|| "the image".to_string(), |p| p.display().to_string());
            return CliError::new(Exit::Failure, format!("reading {what}: {io}"))
                .hint("the directory must hold a checkpoint (from `criu-rs dump`)");
        }
        CliError::bad_input(e.to_string())
            .hint("is it a CRIU image (not pages-*.img), from a CRIU this build knows?")
    }
}

impl From<criu_oci::Error> for CliError {
    fn from(e: criu_oci::Error) -> CliError {
        let exit = if e.is_unreachable() || e.is_auth_refused() {
            Exit::Peer
        } else if e.is_digest_mismatch() {
            Exit::BadInput
        } else {
            Exit::Failure
        };
        let hint = if e.is_unreachable() {
            Some("is the registry up and the reference's host:port right? (--plain-http for a registry without TLS)")
        } else if e.is_auth_refused() {
            Some("check --username and the password in CRIU_RS_REGISTRY_PASSWORD")
        } else if e.is_digest_mismatch() {
            Some("the blob changed in transit or in the registry: pull again, or push it again")
        } else {
            None
        };
        CliError {
            hint: hint.map(str::to_string),
            ..CliError::new(exit, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu::{Context, MigrationError, Operation, SourceState};

    /// What CRIU 4.2's lazy-pages daemon logs when the source it fetches
    /// pages from goes away (seen when `send` is interrupted mid-lazy).
    const GONE: [&str; 2] = [
        "Error (criu/page-xfer.c:1672): page-xfer: Remote side closed connection",
        "Error (criu/page-xfer.c:1546): page-xfer: The page server doesn't answer: No such file or directory",
    ];

    /// What CRIU's restore logs for a file of the tree missing here.
    const MISSING: &str =
        "Error (criu/files-reg.c:2353): Can't open file tmp/out on restore: No such file or directory";

    /// The hint [`LOG_HINTS`] has for log lines containing `needle`.
    fn log_hint(needle: &str) -> Option<String> {
        let entry = LOG_HINTS.iter().find(|(n, _, _)| *n == needle);
        Some(entry.expect("a LOG_HINTS entry").2.to_string())
    }

    /// CRIU refusing `op`, its log saying `lines`.
    fn refused(op: Operation, lines: &[&str]) -> criu::Error {
        criu::Error::Refused {
            ctx: Context {
                operation: Some(op),
                log_errors: lines.iter().map(|l| l.to_string()).collect(),
                ..Context::default()
            },
            errno: None,
        }
    }

    /// The lazy-pages daemon failing as it does when it loses the
    /// source: `criu::Daemon`'s message quotes its log.
    fn daemon_lost_the_source() -> criu::Error {
        criu::Error::Daemon {
            message: format!(
                "lazy-pages daemon: failed (exit status: 1)\n  its lazy-pages.log says:\n    {}",
                GONE.join("\n    ")
            ),
        }
    }

    fn lazy_failure(m: MigrationError) -> CliError {
        CliError::from(criu::Error::migration(m, Some(daemon_lost_the_source())))
    }

    #[test]
    fn a_lazy_fetch_that_lost_its_source_is_not_called_a_missing_file() {
        let step = MigrationError::new(Step::LazyPages, SourceState::Unknown, "fetching failed");
        let e = lazy_failure(step);
        assert_eq!(e.hint.as_deref(), Some(LAZY_SOURCE_LOST));
        assert_eq!(e.exit, Exit::Criu);
        // The same daemon failure outside a migration: no restore's
        // missing file either, and nothing else to say.
        let bare = CliError::from(daemon_lost_the_source());
        assert_eq!(bare.hint, None);
    }

    #[test]
    fn a_cancelled_lazy_migration_gets_no_hint_from_log_text() {
        let step = MigrationError::new(Step::LazyPages, SourceState::Resumed, "x").cancelled();
        let e = lazy_failure(step);
        assert_eq!(e.hint, None);
        assert_eq!(e.exit, Exit::Interrupted);
    }

    #[test]
    fn every_exit_code_is_documented() {
        let all = [
            Exit::Failure,
            Exit::Usage,
            Exit::Criu,
            Exit::Peer,
            Exit::Interrupted,
            Exit::BadInput,
            Exit::Refused,
            Exit::Unconfirmed,
        ];
        for code in all {
            let line = format!("\n  {}  ", code as u8);
            assert!(EXIT_CODES.contains(&line), "{code:?} is not in EXIT_CODES");
        }
        // The heading, 0 (success), and one line per code: no other.
        assert_eq!(EXIT_CODES.lines().count(), all.len() + 2);
    }

    #[test]
    fn a_missing_file_is_named_for_restores_only() {
        let hint = log_hint("No such file or directory");
        for op in [Operation::Restore, Operation::RestoreChild] {
            assert_eq!(CliError::from(refused(op, &[MISSING])).hint, hint, "{op:?}");
        }
        // A dump's "No such file or directory" is no file missing here.
        let dump = CliError::from(refused(Operation::Dump, &[MISSING]));
        assert_eq!(dump.hint, None);
    }

    #[test]
    fn the_other_log_hints_still_fire_for_their_cause() {
        let cases = [
            (
                Operation::Dump,
                "Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.",
                "--tcp-established",
            ),
            (
                Operation::Dump,
                "Error (criu/mount.c:753): mnt: 1188:./data doesn't have a proper root mount",
                "doesn't have a proper root mount",
            ),
            (
                Operation::Restore,
                "Error (criu/mount.c:3141): mnt: No mapping for 1188:/data mountpoint",
                "No mapping for",
            ),
        ];
        for (op, line, needle) in cases {
            assert_eq!(
                CliError::from(refused(op, &[line])).hint,
                log_hint(needle),
                "{line}"
            );
        }
    }
}
