//! Decoding errors: every one names the file (when known) and the byte
//! offset where the image stopped making sense.

use std::fmt;
use std::path::PathBuf;

/// The result of decoding.
pub type Result<T> = std::result::Result<T, Error>;

/// An image that could not be read or decoded.
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    /// The image file, when the bytes came from one.
    pub path: Option<PathBuf>,
    /// Byte offset in the image where decoding failed.
    pub offset: u64,
    /// What was wrong.
    pub kind: ErrorKind,
}

/// What was wrong with an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// The image ends inside a header, size or entry.
    #[error("truncated: needed {needed} more bytes, {left} left")]
    Truncated {
        /// Bytes the next item needs.
        needed: u64,
        /// Bytes left in the image.
        left: u64,
    },
    /// The magic is not one of CRIU's (raw `pages-*.img` have none).
    #[error(
        "unknown magic {0:#x}: not one of CRIU's protobuf images (raw data such as pages-*.img, ip(8) dumps, tar archives; read pages through Memory)"
    )]
    UnknownMagic(u32),
    /// The image is not of the kind the caller asked for
    /// ([`crate::Entries::open`]).
    #[error("magic {found:#x} ({}) where a {expected} image has {:#x}: not a {expected} image", crate::magic::name_of(*found).unwrap_or("unknown"), crate::magic::value_of(expected).unwrap_or(0))]
    WrongMagic {
        /// crit's name of the magic expected (`STATS`).
        expected: String,
        /// The magic found.
        found: u32,
    },
    /// CRIU defines the magic but no message type for it.
    #[error("no decoder for image {0}")]
    NoDecoder(String),
    /// An entry is not a valid protobuf message of its type.
    #[error("entry is not a valid {message}: {source}")]
    Protobuf {
        /// The message type expected.
        message: String,
        /// prost's reason.
        source: prost::DecodeError,
    },
    /// A field the framing depends on is absent or out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn at(offset: u64, kind: ErrorKind) -> Self {
        Error {
            path: None,
            offset,
            kind,
        }
    }

    pub(crate) fn in_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(
                f,
                "{} at offset {}: {}",
                p.display(),
                self.offset,
                self.kind
            ),
            None => write!(f, "image at offset {}: {}", self.offset, self.kind),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}
