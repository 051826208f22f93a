//! Checkpoint archives in the layout Podman, CRI-O and checkpointctl use:
//!
//! ```text
//! checkpoint/      CRIU's images
//! config.dump      the engine's container config (JSON)
//! spec.dump        the OCI runtime spec the container ran with (JSON)
//! stats-dump       CRIU's dump statistics
//! dump.log         CRIU's dump log
//! network.status, rootfs-diff.tar, ...   when the caller has them
//! ```
//!
//! Written as a tar stream, gzip-compressed or not; read plain, gzip or
//! zstd (Podman's default). Reading checks every
//! entry before a byte of it lands: see [`unpack`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

mod tar_stream;
mod unpack;

pub(crate) use unpack::read_capped;
pub use unpack::{unpack, Limits, Unpacked};

/// The directory that holds CRIU's images inside an archive.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The engine's container config.
pub const CONFIG_DUMP: &str = "config.dump";
/// The OCI runtime spec.
pub const SPEC_DUMP: &str = "spec.dump";
/// CRIU's dump statistics (top level, as the engines keep CRIU's work dir).
pub const STATS_DUMP: &str = "stats-dump";
/// CRIU's dump log (top level, likewise).
pub const DUMP_LOG: &str = "dump.log";
/// The engines' network state.
pub const NETWORK_STATUS: &str = "network.status";
/// The container root file system's changes.
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// Files the container deleted from its root file system.
pub const DELETED_FILES: &str = "deleted.files";

/// The extra top-level files a caller may add (the engines' names).
pub const EXTRA_FILES: [&str; 3] = [NETWORK_STATUS, ROOTFS_DIFF, DELETED_FILES];

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (what `podman container checkpoint --compress gzip` writes).
    #[default]
    Gzip,
}

/// What the archive says about the checkpointed process or container.
#[derive(Debug, Clone, Default)]
pub struct ArchiveMeta {
    /// The container's (or process's) name.
    pub name: String,
    /// Its id (config.dump's `id`).
    pub id: String,
    /// The image its root file system came from, if any.
    pub rootfs_image_name: Option<String>,
    /// The runtime spec's `process.args` and `process.cwd`.
    pub args: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// Extra top-level files, named from [`EXTRA_FILES`].
    pub extra: Vec<(String, Vec<u8>)>,
    /// The engine that made the checkpoint, name and version (the
    /// `engine.name` / `engine.version` annotations); criu-rs when `None`.
    pub engine: Option<(String, String)>,
    /// Where CRIU's `stats-dump` and `dump.log` are, when not among the
    /// images: an engine whose runtime removes CRIU's work directory (as
    /// containerd does for Docker) keeps them elsewhere.
    pub criu_files: Option<PathBuf>,
    /// When the checkpoint was made (RFC 3339, `config.dump`'s
    /// `checkpointedTime`); the time of writing when empty.
    pub checkpointed_time: String,
    /// When the container (or process) was started (RFC 3339,
    /// `config.dump`'s `createdTime`, checkpointctl's CREATED column); the
    /// checkpoint's time when empty.
    pub created_time: String,
    /// The OCI runtime that ran it (`config.dump`'s `runtime`,
    /// checkpointctl's RUNTIME column: `runc`, `crun`...); the engine's
    /// name when `None`.
    pub runtime: Option<String>,
}

/// The `spec.dump` annotation that says which engine's archive layout
/// this is; checkpointctl reads `config.dump` as Podman's when it is
/// `libpod`, as CRI-O's when `cri-o`, and otherwise wants containerd's
/// status file.
pub const CONTAINER_MANAGER: &str = "io.container.manager";
/// The value written: the archive follows Podman's layout (which
/// criu-oci writes), so that checkpointctl shows its name, image, id,
/// runtime and creation time. The engine that really made it is in
/// [`crate::annotations::ENGINE_NAME`], in `spec.dump` and on the image.
pub const LAYOUT_MANAGER: &str = "libpod";

impl ArchiveMeta {
    /// The metadata of process `pid` (its command line and working
    /// directory, read now, before the dump), named `name`.
    pub fn of_process(pid: i32, name: &str) -> ArchiveMeta {
        let args = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cwd = fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "/".into());
        ArchiveMeta {
            name: name.into(),
            id: format!("{name}-{pid}"),
            args,
            cwd,
            checkpointed_time: rfc3339_now(),
            created_time: process_start(pid).map(rfc3339).unwrap_or_default(),
            ..ArchiveMeta::default()
        }
    }

    /// The engine's name: [`ArchiveMeta::engine`]'s, or `criu-rs`.
    pub fn engine_name(&self) -> &str {
        self.engine.as_ref().map_or("criu-rs", |(name, _)| name)
    }

    /// The engine's version: [`ArchiveMeta::engine`]'s, or this crate's.
    pub fn engine_version(&self) -> &str {
        self.engine
            .as_ref()
            .map_or(env!("CARGO_PKG_VERSION"), |(_, version)| version)
    }

    /// `config.dump`, with the fields of Podman's that checkpointctl shows.
    fn config_dump(&self) -> Vec<u8> {
        let checkpointed = if self.checkpointed_time.is_empty() {
            rfc3339_now()
        } else {
            self.checkpointed_time.clone()
        };
        let created = if self.created_time.is_empty() {
            checkpointed.clone()
        } else {
            self.created_time.clone()
        };
        let v = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "rootfsImageName": self.rootfs_image_name.clone().unwrap_or_default(),
            "runtime": self.runtime.as_deref().unwrap_or(self.engine_name()),
            "createdTime": created,
            "checkpointedTime": checkpointed,
        });
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }

    /// `spec.dump`: the runtime spec's process, and the annotations that
    /// say whose layout the archive follows and which engine made it.
    fn spec_dump(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": { "args": self.args, "cwd": self.cwd },
            "root": { "path": "/" },
            "annotations": {
                CONTAINER_MANAGER: LAYOUT_MANAGER,
                crate::annotations::ENGINE_NAME: self.engine_name(),
                crate::annotations::ENGINE_VERSION: self.engine_version(),
            },
        });
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }
}

/// What [`write()`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// `sha256:...` of the uncompressed tar stream (an OCI layer's diff id).
    pub diff_id: String,
    /// Files written.
    pub files: usize,
}

/// Writes the archive of the dump in `images` (CRIU's images, with its
/// `dump.log` and `stats-dump`, which go to the top level; from
/// [`ArchiveMeta::criu_files`] when given) to `out`, streaming: nothing
/// beyond one file's buffer is held in memory.
pub fn write(
    images: &criu::ImagesDir,
    meta: &ArchiveMeta,
    out: impl Write,
    compression: Compression,
) -> Result<Written> {
    write_skipping(images, meta, out, compression, &[])
}

/// [`write`], leaving out the images named in `skip` (pages images that
/// travel as parts, see [`crate::parts`]).
pub(crate) fn write_skipping(
    images: &criu::ImagesDir,
    meta: &ArchiveMeta,
    out: impl Write,
    compression: Compression,
    skip: &[String],
) -> Result<Written> {
    for (name, _) in &meta.extra {
        if !EXTRA_FILES.contains(&name.as_str()) {
            return Err(Error::Malformed(format!(
                "extra file {name:?} is not one of {EXTRA_FILES:?}"
            )));
        }
    }
    match compression {
        Compression::None => write_tar(images, meta, out, skip),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            let w = write_tar(images, meta, &mut gz, skip)?;
            gz.try_finish()
                .map_err(|e| Error::io("finishing the gzip stream", e))?;
            Ok(w)
        }
    }
}

/// A writer that hashes (SHA-256) and counts what passes through: the
/// archive's diff id as it is written, a blob as it is copied.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// `sha256:<hex>` of what was written.
    pub(crate) fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_tar(
    images: &criu::ImagesDir,
    meta: &ArchiveMeta,
    out: impl Write,
    skip: &[String],
) -> Result<Written> {
    let hashing = HashingWriter::new(out);
    let mut tar = tar::Builder::new(hashing);
    let mut files = 0;
    let io = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(what, e)
    };
    append_bytes(&mut tar, CONFIG_DUMP, &meta.config_dump()).map_err(io("writing config.dump"))?;
    append_bytes(&mut tar, SPEC_DUMP, &meta.spec_dump()).map_err(io("writing spec.dump"))?;
    files += 2;
    let criu_files = meta.criu_files.as_deref().unwrap_or(images.path());
    for top in [STATS_DUMP, DUMP_LOG] {
        if let Ok(data) = fs::read(criu_files.join(top)) {
            append_bytes(&mut tar, top, &data).map_err(io("writing CRIU's files"))?;
            files += 1;
        }
    }
    for (name, data) in &meta.extra {
        append_bytes(&mut tar, name, data).map_err(io("writing an extra file"))?;
        files += 1;
    }
    append_dir(&mut tar, CHECKPOINT_DIR).map_err(io("writing the checkpoint directory"))?;
    files += append_images(&mut tar, images.path(), Path::new(CHECKPOINT_DIR), skip)?;
    let hashing = tar.into_inner().map_err(io("finishing the tar stream"))?;
    Ok(Written {
        tar_bytes: hashing.bytes,
        diff_id: hashing.digest(),
        files,
    })
}

/// Adds the images under `dir` as `prefix/...`, sorted, leaving out the
/// files that go to the top level.
fn append_images<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    skip: &[String],
) -> Result<usize> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let mut files = 0;
    for name in names {
        let top = prefix == Path::new(CHECKPOINT_DIR);
        if top && (name == STATS_DUMP || name == DUMP_LOG || skip.iter().any(|s| name == **s)) {
            continue;
        }
        let path = dir.join(&name);
        let inside = prefix.join(&name);
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let io = |e| Error::io(format!("archiving {}", path.display()), e);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io)?;
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            tar.append_link(&mut h, &inside, &target).map_err(io)?;
        } else if meta.is_dir() {
            append_dir(tar, &inside).map_err(io)?;
            files += append_images(tar, &path, &inside, &[])?;
        } else if meta.is_file() {
            let f = fs::File::open(&path).map_err(io)?;
            let mut h = header(tar::EntryType::Regular, meta.len(), 0o600);
            tar.append_data(&mut h, &inside, f).map_err(io)?;
            files += 1;
        }
    }
    Ok(files)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    // A fixed time: the same dump gives the same layer digest.
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o600);
    tar.append_data(&mut h, name, data)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: impl AsRef<Path>) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, 0o700);
    tar.append_data(&mut h, name, io::empty())
}

/// The diff id (`sha256:` of the uncompressed tar stream) of the archive
/// `data` (plain or gzip), after reading every entry header within
/// `limits` and finding the `checkpoint/` directory CRIU's images live in.
pub(crate) fn checked_diff_id(data: &[u8], limits: &Limits) -> Result<String> {
    let mut hashing = HashingReader {
        inner: unpack::decompressed(data)?,
        hash: Sha256::new(),
    };
    let mut has_images = false;
    {
        let mut tar = tar_stream::TarStream::new(&mut hashing, limits);
        while let Some(entry) = tar.next_entry()? {
            let path = String::from_utf8_lossy(&entry.path);
            has_images |= path.trim_start_matches("./").starts_with(CHECKPOINT_DIR);
        }
    }
    // The end-of-archive blocks and any padding after them count too.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io("reading the archive", e))?;
    if !has_images {
        return Err(Error::Malformed(format!(
            "the archive has no {CHECKPOINT_DIR}/ directory: not a checkpoint archive"
        )));
    }
    Ok(format!("sha256:{}", hex::encode(hashing.hash.finalize())))
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Now as RFC 3339 UTC (what the engines write in config.dump).
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(secs)
}

/// When process `pid` started, in seconds since the epoch: its start
/// time in clock ticks after boot (`/proc/PID/stat`) plus the boot time
/// (`/proc/stat`'s `btime`).
fn process_start(pid: i32) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis; starttime is the
    // 22nd field of the line, the 20th of these.
    let after = stat.rsplit_once(')')?.1;
    let ticks: i64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: i64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz)
}

/// `secs` since the epoch as RFC 3339 UTC.
pub(crate) fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What checkpointctl's `show` does with an archive: `spec.dump`'s
    /// `io.container.manager` picks the reader; for `libpod` the name,
    /// id, image, runtime and creation time come from `config.dump`.
    #[test]
    fn checkpointctl_finds_its_fields() {
        let dir = tempfile::tempdir().unwrap();
        let images = criu::ImagesDir::create(dir.path().join("images")).unwrap();
        std::fs::write(images.path().join("core-1.img"), b"x").unwrap();
        let mut meta = ArchiveMeta::of_process(std::process::id() as i32, "counter");
        meta.rootfs_image_name = Some("docker.io/library/busybox:latest".into());
        meta.runtime = Some("runc".into());
        let mut tar = Vec::new();
        write(&images, &meta, &mut tar, Compression::Gzip).unwrap();
        let un = unpack(tar.as_slice(), &dir.path().join("un"), &Limits::default()).unwrap();
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(un.root.join(SPEC_DUMP)).unwrap()).unwrap();
        assert_eq!(spec["annotations"][CONTAINER_MANAGER], "libpod");
        assert_eq!(
            spec["annotations"][crate::annotations::ENGINE_NAME],
            "criu-rs"
        );
        let config = un.config_dump().unwrap();
        assert_eq!(config["name"], "counter");
        assert_eq!(config["id"], format!("counter-{}", std::process::id()));
        assert_eq!(
            config["rootfsImageName"],
            "docker.io/library/busybox:latest"
        );
        assert_eq!(config["runtime"], "runc");
        // Go's time.Time reads RFC 3339; this process started before its
        // checkpoint, and after 2020.
        let created = config["createdTime"].as_str().unwrap();
        let checkpointed = config["checkpointedTime"].as_str().unwrap();
        assert_eq!(created.len(), 20, "{created}");
        assert!(created > "2020-01-01T00:00:00Z", "{created}");
        assert!(created <= checkpointed, "{created} {checkpointed}");
        assert!(process_start(std::process::id() as i32).is_some());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.as_str() > "2024-01-01T00:00:00Z", "{t}");
    }
}
