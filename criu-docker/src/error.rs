//! What can go wrong, typed, with what the caller must act on as fields.

use std::path::PathBuf;

use serde::Serialize;

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the source container is after a failed [`crate::send`]: what the
/// user must know before doing anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SourceState {
    /// It runs on the source host: it never stopped (the failure came
    /// before the checkpoint), or it was started again from its
    /// checkpoint where it had stopped.
    Running,
    /// It was checkpointed and could not be started again: it is stopped,
    /// its checkpoint kept; `docker start --checkpoint=NAME CONTAINER`
    /// (where `checkpoint` is `.../checkpoints/NAME`) starts it where it
    /// stopped.
    Stopped {
        /// The checkpoint's directory on the source host.
        checkpoint: PathBuf,
    },
    /// The destination had started its copy, and did not confirm that it
    /// keeps it: the source was started again, so two copies may run.
    /// Check the destination before relying on either.
    MaybeTwice,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Docker API call failed.
    #[error("{what}: {source}")]
    Docker {
        /// The call, with its arguments.
        what: String,
        /// bollard's error (the daemon's message, or why it was not reached).
        #[source]
        source: bollard::errors::Error,
    },
    /// A request bollard has no parameter for (start from a checkpoint)
    /// was answered with an error, or could not be sent.
    #[error("{what}: {message}")]
    Api {
        /// The call, with its arguments.
        what: String,
        /// The daemon's answer, or why it was not reached.
        message: String,
    },
    /// The daemon cannot be used for a migration (no experimental mode,
    /// data root out of reach, ...), or the container cannot be moved.
    /// Nothing was stopped.
    #[error("{}", .reasons.join("; "))]
    Refused {
        /// Which side refused: `source` or `destination`.
        side: &'static str,
        /// Every reason found, each with its fix.
        reasons: Vec<String>,
    },
    /// `docker checkpoint create` failed.
    #[error("docker checkpoint create {checkpoint} of {container}: {message}{}", log_excerpt(.criu_log))]
    Checkpoint {
        /// The container.
        container: String,
        /// The checkpoint's name.
        checkpoint: String,
        /// The daemon's message.
        message: String,
        /// The `Error` lines of CRIU's dump log, when it could be read.
        criu_log: Option<String>,
    },
    /// The destination could not start the container from the checkpoint.
    #[error("the destination did not restore the container: {0}")]
    Restore(String),
    /// The stream between the hosts failed, or the image transfer did
    /// (criu-rs's own error).
    #[error(transparent)]
    Transfer(#[from] criu::Error),
    /// The peer sent something out of turn.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad arguments or a wrong calling context.
    #[error("{0}")]
    Usage(String),
    /// A failure once the source had something to lose, with where the
    /// source container is now.
    #[error("{cause} (the source container: {})", describe(.source_state))]
    Moving {
        /// What failed.
        #[source]
        cause: Box<Error>,
        /// Where the source container is now.
        source_state: SourceState,
    },
}

fn log_excerpt(log: &Option<String>) -> String {
    match log {
        Some(l) if !l.is_empty() => format!("\nCRIU's dump log:\n  {l}"),
        _ => String::new(),
    }
}

fn describe(s: &SourceState) -> String {
    match s {
        SourceState::Running => "running".into(),
        SourceState::Stopped { checkpoint } => format!(
            "stopped, its checkpoint kept in {}: docker start --checkpoint=NAME restarts it",
            checkpoint.display()
        ),
        SourceState::MaybeTwice => {
            "running again, and the destination may run its copy too: check it".into()
        }
    }
}

impl Error {
    pub(crate) fn docker(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
        let what = what.into();
        move |source| Error::Docker { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// Whether the daemon answered 404 (no such container, image, volume
    /// or network).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Docker {
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
                ..
            }
        )
    }

    /// Whether a pre-flight refused the move (nothing was stopped).
    pub fn is_refused(&self) -> bool {
        match self {
            Error::Refused { .. } => true,
            Error::Moving { cause, .. } => cause.is_refused(),
            _ => false,
        }
    }

    /// Where the source container is, for a failure of [`crate::send`]
    /// (`None` for errors of other calls).
    pub fn source_state(&self) -> Option<&SourceState> {
        match self {
            Error::Moving { source_state, .. } => Some(source_state),
            _ => None,
        }
    }
}
