//! A thin command line over criu-rs.
//!
//! ```text
//! checkpoint dump --pid PID --images-dir DIR [--leave-running] [--shell-job]
//!                 [--tcp-established] [--ext-unix-sk] [--file-locks] [--json]
//! checkpoint restore --images-dir DIR [--shell-job] [--json]
//! checkpoint check
//! checkpoint stats --images-dir DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use criu::{Criu, ImagesDir, Options};

#[derive(Parser)]
#[command(about = "Checkpoint and restore processes with CRIU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoint a process tree into a directory.
    Dump {
        /// The root of the tree.
        #[arg(long)]
        pid: i32,
        /// Where the images go (created 0700 if missing; must hold no checkpoint).
        #[arg(long)]
        images_dir: PathBuf,
        /// Keep the tree running after the dump.
        #[arg(long)]
        leave_running: bool,
        /// The tree belongs to a terminal session.
        #[arg(long)]
        shell_job: bool,
        /// Checkpoint established TCP connections.
        #[arg(long)]
        tcp_established: bool,
        /// Allow external unix sockets.
        #[arg(long)]
        ext_unix_sk: bool,
        /// Checkpoint file locks.
        #[arg(long)]
        file_locks: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Restore a checkpoint, detached; prints the restored pid.
    Restore {
        /// Where the images are.
        #[arg(long)]
        images_dir: PathBuf,
        /// The tree belonged to a terminal session.
        #[arg(long)]
        shell_job: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check that CRIU works here; print its version and features.
    Check,
    /// Print CRIU's statistics from an images (work) directory as JSON.
    Stats {
        /// The directory.
        #[arg(long)]
        images_dir: PathBuf,
    },
}

fn open_or_create(path: &Path) -> criu::Result<ImagesDir> {
    if path.exists() {
        ImagesDir::open(path)
    } else {
        ImagesDir::create(path)
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let criu = Criu::new();
    match cli.command {
        Command::Dump {
            pid,
            images_dir,
            leave_running,
            shell_job,
            tcp_established,
            ext_unix_sk,
            file_locks,
            json,
        } => {
            let images = open_or_create(&images_dir)?;
            let report = criu.dump(
                Options::new()
                    .pid(pid)
                    .images_dir(&images)
                    .log_file("dump.log")
                    .leave_running(leave_running)
                    .shell_job(shell_job)
                    .tcp_established(tcp_established)
                    .ext_unix_sk(ext_unix_sk)
                    .file_locks(file_locks),
            )?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!(
                    "dumped pid {pid} into {} in {:?}",
                    images_dir.display(),
                    report.wall_time
                );
                if let Some(s) = report.stats {
                    print!(
                        " (stopped {:?}, {} pages written)",
                        s.stopped_time(),
                        s.pages_written
                    );
                }
                println!();
            }
        }
        Command::Restore {
            images_dir,
            shell_job,
            json,
        } => {
            let images = ImagesDir::open(&images_dir)?;
            let report = criu.restore(
                Options::new()
                    .images_dir(&images)
                    .log_file("restore.log")
                    .shell_job(shell_job),
            )?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.pid);
            }
        }
        Command::Check => {
            criu.check()?;
            let version = criu.version()?;
            let features = criu.feature_check()?;
            println!(
                "{}",
                serde_json::json!({ "ok": true, "version": version.to_string(), "features": features })
            );
        }
        Command::Stats { images_dir } => {
            let images = ImagesDir::open(&images_dir)?;
            let dump = images.dump_stats()?.and_then(|s| s.dump);
            let restore = images.restore_stats()?.and_then(|s| s.restore);
            println!(
                "{}",
                serde_json::json!({ "dump": dump, "restore": restore })
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
