//! The Rust types prost generates from CRIU's `images/*.proto` (named as
//! CRIU names its messages: `pstree_entry` is [`PstreeEntry`]).
#![allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));
