//! Look inside a checkpoint without CRIU: criu-image decodes every image
//! file, the way CRIU's own `crit` does.
//!
//! ```text
//! sudo cargo run -p criu-rs-examples --example inspect               # a checkpoint of its own
//! cargo run -p criu-rs-examples --example inspect -- --images-dir DIR   # any checkpoint
//! ```
//!
//! Without `--images-dir` it checkpoints a small python3 process of its own
//! first (left running: `leave_running`), started with a marker argument
//! and variable, and then checks that the checkpoint shows both. Three
//! levels of the API are used:
//!
//! * `Checkpoint::inspect`: the questions people ask (processes, command
//!   lines and environments read from the dumped memory, files, sockets,
//!   memory, namespaces, mounts, CRIU's statistics);
//! * `Image::typed`: one image's entries as the generated protobuf types;
//! * `crit::render`: one image as the JSON `crit decode --pretty` prints.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use criu::{Criu, ImagesDir, Options};
use criu_image::crit::{self, Style};
use criu_image::proto::PstreeEntry;
use criu_image::{Checkpoint, Inspection};

#[derive(Parser)]
#[command(about = "Decode and inspect a CRIU checkpoint with criu-image")]
struct Args {
    /// A checkpoint's images directory (default: make one here first).
    #[arg(long)]
    images_dir: Option<PathBuf>,
}

const MARKER: &str = "criu-rs-inspect-marker";

fn main() -> Result<(), Box<dyn Error>> {
    match Args::parse().images_dir {
        Some(dir) => show(&dir).map(drop),
        None => {
            let dir = std::env::temp_dir().join(format!("criu-rs-inspect-{}", std::process::id()));
            std::fs::create_dir(&dir)?;
            let result = checkpoint_of_our_own(&dir).and_then(|()| check(&dir));
            std::fs::remove_dir_all(&dir)?;
            result
        }
    }
}

/// Prints what the checkpoint in `dir` holds.
fn show(dir: &Path) -> Result<Inspection, Box<dyn Error>> {
    let checkpoint = Checkpoint::open(dir);
    let inspection = checkpoint.inspect()?;
    for p in &inspection.processes {
        println!(
            "pid {} (parent {}) {}: {:?}",
            p.pid, p.ppid, p.command, p.argv
        );
        println!(
            "  memory: {} mappings, {:.1} MiB mapped, {:.1} MiB dumped",
            p.memory.vmas,
            p.memory.mapped_bytes as f64 / 1048576.0,
            p.memory.dumped_bytes as f64 / 1048576.0
        );
        for f in &p.files {
            println!("  fd {:>2}: {:<6} {} {}", f.fd, f.kind, f.path, f.flags);
        }
        for s in &p.sockets {
            println!(
                "  socket fd {}: {} {} {} -> {}",
                s.fd, s.family, s.state, s.local, s.remote
            );
        }
        println!("  namespaces: {:?}", p.namespaces);
    }
    println!(
        "{} mounts, {} image files",
        inspection.mounts.len(),
        checkpoint.image_names()?.len()
    );

    // One image, typed: the process tree as the generated structs.
    let pstree = checkpoint.image("pstree.img")?;
    for entry in pstree.typed::<PstreeEntry>()? {
        println!(
            "pstree: pid {} pgid {} sid {} threads {:?}",
            entry.pid, entry.pgid, entry.sid, entry.threads
        );
    }
    // The same image as crit's JSON (`{:#}`: pretty-printed).
    println!("{:#}", crit::render(&pstree, Style::Pretty));
    Ok(inspection)
}

/// Starts a marked process, checkpoints it (it runs on), and stops it.
fn checkpoint_of_our_own(dir: &Path) -> Result<(), Box<dyn Error>> {
    let script = "import os, time\nos.closerange(3, 65536)\nwhile True: time.sleep(0.1)";
    // `setsid`: CRIU dumps a session leader (or a tree under one) only.
    let mut child = Command::new("setsid")
        .args(["python3", "-c", script, MARKER])
        .env("CRIU_RS_EXAMPLE", MARKER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait (10 s at most) until python3 runs and has closed what it inherited.
    let fds = format!("/proc/{}/fd", child.id());
    for _ in 0..1000 {
        if std::fs::read_dir(&fds)?.count() <= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let images = ImagesDir::create(dir.join("images"));
    let dumped = images.and_then(|images| {
        Criu::new().dump(
            Options::new()
                .pid(child.id() as i32)
                .images_dir(&images)
                .leave_running(true)
                .log_file("dump.log"),
        )
    });
    child.kill()?;
    child.wait()?;
    dumped?;
    Ok(())
}

/// Shows our own checkpoint and checks it holds what was started.
fn check(dir: &Path) -> Result<(), Box<dyn Error>> {
    let processes = show(&dir.join("images"))?.processes;
    let root = processes.first().ok_or("the checkpoint holds no process")?;
    let has_arg = root.argv.iter().any(|a| a == MARKER);
    let has_env = root
        .environment
        .contains(&format!("CRIU_RS_EXAMPLE={MARKER}"));
    println!(
        "command line and environment read back from the dumped memory: {}",
        has_arg && has_env
    );
    if !(has_arg && has_env) {
        return Err(format!("the marker is missing: argv {:?}", root.argv).into());
    }
    Ok(())
}
