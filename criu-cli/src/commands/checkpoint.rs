//! `dump`, `restore`, `stats`, `inspect`: a checkpoint in a directory.

use std::path::Path;

use criu::image::Checkpoint;
use criu::{Criu, ImagesDir, Options};
use serde_json::json;

use crate::args::{DirArgs, DumpArgs, RestoreArgs};
use crate::error::{CliError, CliResult};
use crate::output::print_json;

fn open_or_create(path: &Path) -> CliResult<ImagesDir> {
    let dir = if path.exists() {
        ImagesDir::open(path)
    } else {
        ImagesDir::create(path)
    };
    Ok(dir?)
}

/// Checkpoints `--pid`'s tree into `--images-dir`.
pub fn dump(a: &DumpArgs) -> CliResult {
    a.criu.check_for("dump")?;
    let images = open_or_create(&a.images_dir)?;
    let mut opts = Options::new();
    opts.pid(a.pid)
        .images_dir(&images)
        .log_file("dump.log")
        .leave_running(a.criu.leave_running);
    a.criu.apply(&mut opts);
    let report = Criu::new()
        .dump(&mut opts)
        .map_err(|e| log_hint(CliError::from(e), &a.images_dir, "dump.log"))?;
    if a.json {
        return print_json(&report);
    }
    print!(
        "dumped pid {} into {} in {:.1} ms",
        a.pid,
        a.images_dir.display(),
        report.wall_time.as_secs_f64() * 1000.0
    );
    if let Some(s) = &report.stats {
        print!(
            " (frozen {:.1} ms, {} pages written)",
            s.frozen_time.as_secs_f64() * 1000.0,
            s.pages_written
        );
    }
    println!();
    if !a.criu.leave_running {
        println!(
            "the tree was stopped; `criu-rs restore --images-dir {}` brings it back",
            a.images_dir.display()
        );
    }
    Ok(())
}

/// Adds where CRIU's log is, when the error has no hint of its own.
fn log_hint(e: CliError, dir: &Path, log: &str) -> CliError {
    if e.hint.is_some() || e.exit != crate::error::Exit::Criu {
        return e;
    }
    let path = dir.join(log);
    e.hint(format!(
        "CRIU's whole log is {} (--log-level debug says more)",
        path.display()
    ))
}

/// Restores the checkpoint in `--images-dir`, detached.
pub fn restore(a: &RestoreArgs) -> CliResult {
    a.criu.check_for("restore")?;
    let images = ImagesDir::open(&a.images_dir)?;
    if a.criu.root.is_none() && has_mount_namespace(&a.images_dir) {
        // CRIU 4.2 crashes on it (a BUG in its mount code) rather than
        // saying so.
        return Err(CliError::usage(
            "the checkpoint has a mount namespace of its own, and CRIU restores one only with --root",
        )
        .hint("pass --root DIR: the directory that becomes the tree's root, holding its files at the same paths"));
    }
    let mut opts = Options::new();
    opts.images_dir(&images).log_file("restore.log");
    a.criu.apply(&mut opts);
    let report = Criu::new()
        .restore(&mut opts)
        .map_err(|e| log_hint(CliError::from(e), &a.images_dir, "restore.log"))?;
    if a.json {
        return print_json(&report);
    }
    println!("{}", report.pid);
    Ok(())
}

/// Whether the checkpoint in `dir` holds a mount namespace (CRIU writes
/// `mountpoints-ID.img` only for a tree whose mount namespace is not its
/// own).
fn has_mount_namespace(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("mountpoints-") && name.ends_with(".img")
        })
    })
}

/// Prints CRIU's dump and restore statistics.
pub fn stats(a: &DirArgs) -> CliResult {
    let images = ImagesDir::open(&a.images_dir)?;
    let dump = images.dump_stats()?.and_then(|s| s.dump);
    let restore = images.restore_stats()?.and_then(|s| s.restore);
    if dump.is_none() && restore.is_none() {
        return Err(CliError::new(
            crate::error::Exit::Failure,
            format!("{} holds no CRIU statistics", a.images_dir.display()),
        )
        .hint("CRIU writes stats-dump and stats-restore into the images (or work) directory of a dump or restore"));
    }
    if a.json {
        return print_json(&json!({ "dump": dump, "restore": restore }));
    }
    if let Some(d) = &dump {
        println!("dump:");
        print_fields(&serde_json::to_value(d).unwrap_or_default());
    }
    if let Some(r) = &restore {
        println!("restore:");
        print_fields(&serde_json::to_value(r).unwrap_or_default());
    }
    Ok(())
}

fn print_fields(v: &serde_json::Value) {
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            if !v.is_null() {
                println!("  {k}: {v}");
            }
        }
    }
}

/// Shows what a checkpoint holds.
pub fn inspect(a: &DirArgs) -> CliResult {
    let inspection = Checkpoint::open(&a.images_dir).inspect()?;
    if a.json {
        return print_json(&inspection);
    }
    print!("{inspection}");
    Ok(())
}
