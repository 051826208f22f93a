//! Read CRIU's checkpoint images without CRIU, Python or Go.
//!
//! * [`Image`]: one image file decoded: CRIU's framing (the magic header,
//!   size-prefixed protobuf entries, the raw payloads some images carry after
//!   an entry), every entry a reflective [`prost_reflect::DynamicMessage`]
//!   that also decodes into the generated typed structs of [`proto`].
//! * [`Entries`]: the light path: one image of a known kind, its entries
//!   decoded straight into [`proto`] types (no reflection).
//! * [`crit`]: the JSON that CRIU's own `crit decode` prints for an image,
//!   value for value (plain or `--pretty`).
//! * [`Memory`]: the dumped memory of a task, addressed by virtual address
//!   through `pagemap-*.img` and `pages-*.img`.
//! * [`Checkpoint`]: the questions people ask of a checkpoint (process tree,
//!   command lines, environment, memory, files, sockets, namespaces,
//!   mounts, statistics) as one serialisable [`Inspection`].
//!
//! The types of [`proto`], the descriptors behind the reflection and the
//! table of [`magic`] numbers are generated from CRIU 4.2.1's source by the
//! repository's `scripts/update-image-protos.sh` and committed, so the crate
//! builds with no CRIU source, protoc or network. CRIU's `images/*.proto`
//! are under the MIT licence (its notice is shipped as
//! `src/generated/LICENSE-CRIU-IMAGES`); from `magic.h` only the magic
//! names and numbers are taken.
//!
//! What the crate returns (images, entries, inspections, errors) is
//! `#[non_exhaustive]`: newer CRIU versions add fields and images, and the
//! crate can follow them without a breaking release. The enums of the
//! format itself ([`Layout`], [`PayloadKind`], [`Extra`]) are exhaustive
//! on purpose: an encoder (the `criu-rs` command's) must handle every
//! layout and payload, and a new one should fail its build, not its run.
//!
//! ```no_run
//! let image = criu_image::Image::open("/tmp/ck/pstree.img")?;
//! println!("{}", criu_image::crit::render(&image, criu_image::crit::Style::Plain));
//! # Ok::<(), criu_image::Error>(())
//! ```
#![deny(missing_docs)]

mod checkpoint;
pub mod crit;
mod descriptors;
mod entries;
mod error;
mod framing;
mod image;
mod kind;
pub mod magic;
mod memory;
mod payload;
pub mod proto;

pub use checkpoint::{
    Checkpoint, FileView, Inspection, MemoryView, MountView, NamespaceView, ProcessView, SocketView,
};
pub use descriptors::pool;
pub use entries::Entries;
pub use error::{Error, ErrorKind, Result};
pub use image::{Entry, Image};
pub use kind::{ImageKind, Layout, PayloadKind};
pub use memory::Memory;
pub use payload::Extra;
