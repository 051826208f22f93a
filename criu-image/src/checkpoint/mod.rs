//! A checkpoint as people look at it: which processes, running what, with
//! which files, sockets and memory, in which namespaces and mounts.

mod display;
mod files;
mod process;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crit::{self, Style};
use crate::error::Result;
use crate::image::Image;
use crate::proto::{FileEntry, MntEntry, PstreeEntry};

pub use files::{FileView, SocketView};
pub use process::{MemoryView, NamespaceView, ProcessView};

/// An images directory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
}

/// Everything [`Checkpoint::inspect`] found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// The images directory.
    pub images_dir: PathBuf,
    /// Every process of the tree, parents before children.
    pub processes: Vec<ProcessView>,
    /// The mounts of every mount namespace dumped.
    pub mounts: Vec<MountView>,
    /// CRIU's statistics (`stats-dump`, as crit renders it), if present.
    pub stats: Option<serde_json::Value>,
}

/// One mount.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MountView {
    /// The mount namespace (CRIU's id) it belongs to.
    pub mnt_ns: u32,
    /// The mount's id.
    pub mnt_id: u32,
    /// Its parent's id.
    pub parent_mnt_id: u32,
    /// Where it is mounted.
    pub mountpoint: String,
    /// The filesystem type.
    pub fstype: String,
    /// The mount source.
    pub source: String,
    /// The mount options.
    pub options: String,
}

impl Checkpoint {
    /// The checkpoint in `dir` (read lazily).
    pub fn open(dir: impl AsRef<Path>) -> Checkpoint {
        Checkpoint {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The images directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Decodes one image of the checkpoint by file name (`pstree.img`).
    pub fn image(&self, name: &str) -> Result<Image> {
        Image::open(self.dir.join(name))
    }

    /// The image files in the directory (names), sorted.
    pub fn image_names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".img") || n == "stats-dump" || n == "stats-restore")
            .collect();
        names.sort();
        Ok(names)
    }

    /// The tree, files, sockets, memory, namespaces, mounts and statistics.
    pub fn inspect(&self) -> Result<Inspection> {
        let tree: Vec<PstreeEntry> = typed(&self.image("pstree.img")?)?;
        let files: Vec<FileEntry> = match self.optional("files.img")? {
            Some(image) => typed(&image)?,
            None => Vec::new(),
        };
        let processes = tree
            .iter()
            .map(|p| process::view(self, p, &files))
            .collect::<Result<Vec<_>>>()?;
        let stats = self
            .optional("stats-dump")?
            .map(|image| crit::render(&image, Style::Plain)["entries"][0]["dump"].clone());
        Ok(Inspection {
            images_dir: self.dir.clone(),
            mounts: self.mounts()?,
            processes,
            stats,
        })
    }

    /// An image that a checkpoint may lack.
    fn optional(&self, name: &str) -> Result<Option<Image>> {
        if self.dir.join(name).exists() {
            self.image(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn mounts(&self) -> Result<Vec<MountView>> {
        let mut out = Vec::new();
        for name in self.image_names().unwrap_or_default() {
            let Some(ns) = name
                .strip_prefix("mountpoints-")
                .and_then(|n| n.strip_suffix(".img"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            for m in typed::<MntEntry>(&self.image(&name)?)? {
                out.push(mount_view(ns, m));
            }
        }
        Ok(out)
    }
}

fn mount_view(mnt_ns: u32, m: MntEntry) -> MountView {
    let fstype = m.fsname.clone().unwrap_or_else(|| {
        crate::proto::Fstype::try_from(m.fstype as i32)
            .map(|f| f.as_str_name().to_lowercase())
            .unwrap_or_else(|_| m.fstype.to_string())
    });
    MountView {
        mnt_ns,
        mnt_id: m.mnt_id,
        parent_mnt_id: m.parent_mnt_id,
        mountpoint: m.mountpoint,
        fstype,
        source: m.source,
        options: m.options,
    }
}

/// An image's entries as a generated type; a decode failure names the file.
pub(crate) fn typed<T: prost::Message + Default>(image: &Image) -> Result<Vec<T>> {
    image.typed().map_err(|e| {
        crate::error::Error::at(
            0,
            crate::error::ErrorKind::Invalid(format!("{} entry: {e}", image.magic)),
        )
    })
}
