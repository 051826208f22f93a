//! `export` and `import`: checkpoint archives in the container engines'
//! layout (`checkpoint/` with CRIU's images, `config.dump`, `spec.dump`,
//! `stats-dump`, `dump.log`).

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::Path;

use criu::ImagesDir;
use criu_oci::archive::{self, ArchiveMeta, Limits};
use serde_json::json;

use crate::args::{ExportArgs, ImportArgs, MetaArgs};
use crate::error::{CliError, CliResult};
use crate::output::print_json;

/// The archive's metadata: the process's (read now) or just a name.
pub fn meta(m: &MetaArgs) -> ArchiveMeta {
    match m.pid {
        Some(pid) => ArchiveMeta::of_process(pid, &m.name),
        None => ArchiveMeta {
            name: m.name.clone(),
            id: m.name.clone(),
            cwd: "/".into(),
            ..ArchiveMeta::default()
        },
    }
}

/// The checkpoint in `dir`, refused early when there is none.
pub fn checkpoint_dir(dir: &Path) -> CliResult<ImagesDir> {
    let images = ImagesDir::open(dir)?;
    if !images.holds_images() {
        return Err(
            CliError::usage(format!("{} holds no checkpoint", dir.display()))
                .hint("make one with `criu-rs dump --pid PID --images-dir DIR`"),
        );
    }
    Ok(images)
}

/// Writes the archive.
pub fn export(a: &ExportArgs) -> CliResult {
    let images = checkpoint_dir(&a.images_dir)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&a.output)
        .map_err(|e| {
            CliError::io(format!("creating {}", a.output.display()), e)
                .hint("the archive must not exist yet")
        })?;
    let mut out = BufWriter::new(file);
    let written = archive::write(&images, &meta(&a.meta), &mut out, a.compression.into())
        .map_err(CliError::from)
        .and_then(|w| {
            std::io::Write::flush(&mut out)
                .map(|()| w)
                .map_err(|e| CliError::io(format!("writing {}", a.output.display()), e))
        });
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&a.output);
            return Err(e);
        }
    };
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    if a.json {
        return print_json(&json!({
            "archive": a.output,
            "bytes": size,
            "tar_bytes": written.tar_bytes,
            "files": written.files,
            "diff_id": written.diff_id,
        }));
    }
    println!(
        "wrote {} ({} files, {} bytes)",
        a.output.display(),
        written.files,
        size
    );
    Ok(())
}

/// Unpacks an archive.
pub fn import(a: &ImportArgs) -> CliResult {
    let file = File::open(&a.input)
        .map_err(|e| CliError::io(format!("opening {}", a.input.display()), e))?;
    let unpacked = archive::unpack(file, &a.target, &Limits::default())?;
    let images = unpacked.root.join(archive::CHECKPOINT_DIR);
    if a.json {
        return print_json(&json!({
            "target": unpacked.root,
            "images_dir": images,
            "bytes": unpacked.bytes,
            "entries": unpacked.entries,
        }));
    }
    println!(
        "unpacked {} entries into {}; restore with `criu-rs restore --images-dir {}`",
        unpacked.entries,
        unpacked.root.display(),
        images.display()
    );
    Ok(())
}
