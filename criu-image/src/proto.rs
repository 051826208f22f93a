//! The Rust types prost generates from CRIU's `images/*.proto` (named as
//! CRIU names its messages: `pstree_entry` is [`PstreeEntry`]).
//!
//! Generated from CRIU 4.2.1 by `scripts/update-image-protos.sh` and
//! committed (`src/generated/images.rs`), so the crate builds without
//! CRIU's source; `make generated-check` proves the file is what the
//! generator makes of the protos today.
#![allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]

include!("generated/images.rs");
