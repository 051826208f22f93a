//! Safe checkpoint/restore with CRIU.
#![deny(missing_docs)]
pub use criu_sys as sys;
