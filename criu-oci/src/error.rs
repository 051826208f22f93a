//! What can go wrong, with the cause and the fix.

use std::io;

/// A failed archive, image or registry operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// CRIU (through criu-rs) failed.
    #[error(transparent)]
    Criu(#[from] criu::Error),
    /// An archive entry would land outside the target, or is of a kind a
    /// checkpoint never holds; nothing of it was written.
    #[error("unsafe archive entry {entry:?}: {reason}; the archive was not unpacked")]
    UnsafeEntry {
        /// The entry's path as the archive names it.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// An archive is larger than the limits allow.
    #[error("{what} exceeds the limit of {limit} (bytes, or entries); if the checkpoint is really that large, raise `Limits` (the caps on manifests, image configs and tar metadata entries are fixed)")]
    TooLarge {
        /// What is too large.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The archive's layout or compression is not one this crate reads.
    #[error("malformed checkpoint archive: {0}")]
    Malformed(String),
    /// The registry could not be reached.
    #[error("registry {registry} unreachable: {message}; check its address, that it runs, and the network between")]
    Unreachable {
        /// The registry's host:port.
        registry: String,
        /// The client's message.
        message: String,
    },
    /// The registry's TLS certificate was not trusted (or TLS failed).
    #[error("TLS with registry {registry} failed: {message}; give its CA certificate (`RegistryConfig::ca_pem`), or `plain_http` for a registry that serves HTTP")]
    Tls {
        /// The registry's host:port.
        registry: String,
        /// The client's message.
        message: String,
    },
    /// The registry refused the credentials.
    #[error(
        "registry {registry} refused authentication: {message}; check the user name and password"
    )]
    AuthRefused {
        /// The registry's host:port.
        registry: String,
        /// The registry's message.
        message: String,
    },
    /// A blob's content does not match its digest: the registry (or a
    /// layout directory) served damaged or altered data. Nothing was
    /// unpacked.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; the data was altered in storage or in transit, and was not used")]
    Digest {
        /// Which blob.
        what: String,
        /// The digest the manifest names.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The image carries no engine's container-name annotation (see
    /// [`crate::annotations::KEY_SETS`]): it is not a checkpoint image, or
    /// a copy lost its annotations. Nothing but its manifest was
    /// downloaded.
    #[error(
        "{reference} is not a checkpoint image: {hint}; nothing was downloaded beyond its manifest"
    )]
    NotACheckpoint {
        /// The image reference.
        reference: String,
        /// What is missing, and what to do.
        hint: String,
    },
    /// The checkpoint was made on a host this one cannot restore it on.
    #[error("checkpoint {reference} cannot be restored here: {reason}")]
    Incompatible {
        /// The image reference.
        reference: String,
        /// What differs, from the annotations.
        reason: String,
    },
    /// Any other registry error.
    #[error("registry operation {what} failed: {message}")]
    Registry {
        /// The operation.
        what: String,
        /// The client's message.
        message: String,
    },
    /// An OCI image layout directory is malformed.
    #[error("OCI image layout {path}: {message}")]
    Layout {
        /// The layout directory.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the registry could not be reached.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }

    /// Whether the registry refused the credentials.
    pub fn is_auth_refused(&self) -> bool {
        matches!(self, Error::AuthRefused { .. })
    }

    /// Whether data failed its digest check.
    pub fn is_digest_mismatch(&self) -> bool {
        matches!(self, Error::Digest { .. })
    }
}
