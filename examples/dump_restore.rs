//! Checkpoint a running process, then restore it: the smallest round trip.
//!
//! ```text
//! sudo cargo run -p criu-rs-examples --example dump_restore
//! ```
//!
//! A counter (a few lines of python3 printing 1, 2, 3... into a file, see
//! `counter/mod.rs`) is started as our child. `Criu::dump` freezes it,
//! writes its state into an images directory and kills it;
//! `Criu::restore_child` brings it back, as our child again, with the pid
//! it had. The file then shows whether it counted on from where it
//! stopped (no number repeated, none skipped).

use std::error::Error;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use criu::{Criu, ImagesDir, Options};

mod counter;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("criu-rs-dump-restore-{}", std::process::id()));
    fs::create_dir(&dir)?;
    let result = round_trip(&dir);
    fs::remove_dir_all(&dir)?;
    result
}

fn round_trip(dir: &Path) -> Result<(), Box<dyn Error>> {
    let criu = Criu::new();
    println!("CRIU {}", criu.version()?);

    // `setsid`: CRIU dumps a session leader (or a tree under one) only.
    let out = dir.join("counter.out");
    let mut child = Command::new("setsid")
        .args(["python3", "-c", counter::SCRIPT])
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id() as i32;

    // The dump freezes the tree, writes its images and kills it (unless
    // `leave_running(true)`). The images directory is private (0700): it
    // holds the process's memory.
    let images = ImagesDir::create(dir.join("images"))?;
    let dump = counter::wait_for(&out, 100).and_then(|()| {
        Ok(criu.dump(
            Options::new()
                .pid(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )?)
    });
    // Reap it either way: a failed dump leaves it running, and a restore
    // needs its pid free (an unreaped zombie still holds it).
    let _ = child.kill();
    child.wait()?;
    let dump = dump?;
    let at_dump = counter::last(&out)?;

    // The restore: the same pid, the same memory, the same open file at the
    // same offset, now a child of this process (`RestoredChild` kills and
    // reaps it when dropped).
    let (mut restored, restore) =
        criu.restore_child(Options::new().images_dir(&images).log_file("restore.log"))?;
    let counted_on = counter::wait_for(&out, at_dump + 100);
    restored.kill()?;
    restored.wait()?;
    counted_on?;

    let continuous = counter::continuous(&out)?;
    println!(
        "pid {pid} dumped at {at_dump}, restored as pid {}",
        restore.pid
    );
    if let Some(stats) = &dump.stats {
        println!(
            "  dump     {:>7.1} ms, frozen {:.1} ms, {} pages written",
            ms(dump.wall_time),
            ms(stats.stopped_time()),
            stats.pages_written
        );
    }
    println!("  restore  {:>7.1} ms", ms(restore.wall_time));
    println!(
        "  counted on to {}, no number repeated or skipped: {continuous}",
        counter::last(&out)?
    );
    if !continuous {
        return Err("the restored counter did not continue where it stopped".into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
