//! A thin command line over criu-rs.
//!
//! ```text
//! checkpoint dump --pid PID --images-dir DIR [--leave-running] [CHECKPOINT OPTIONS] [--json]
//! checkpoint restore --images-dir DIR [--deadline-secs N] [CHECKPOINT OPTIONS] [--json]
//! checkpoint check
//! checkpoint stats --images-dir DIR
//! checkpoint inspect --images-dir DIR [--json]
//! checkpoint decode --images-dir DIR --image NAME [--pretty]
//! ```
//!
//! CHECKPOINT OPTIONS (`--shell-job`, `--tcp-established`, `--ext-unix-sk`,
//! `--file-locks`, ...) are the ones that shape what a checkpoint holds:
//! `dump` and `restore` share them, so a checkpoint is restored with the
//! flags it was made with.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use criu::image::{crit, Checkpoint};
use criu::{Criu, ImagesDir, Options};

#[derive(Parser)]
#[command(about = "Checkpoint and restore processes with CRIU, and look inside checkpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options that change what a checkpoint holds, hence how it must be
/// restored: one struct for both `dump` and `restore`.
#[derive(Args, Debug, Clone, Default)]
struct CheckpointOptions {
    /// The tree belongs to a terminal session.
    #[arg(long)]
    shell_job: bool,
    /// Checkpoint (restore) established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Close established TCP connections (on dump: drop them; on restore:
    /// restore them closed).
    #[arg(long)]
    tcp_close: bool,
    /// Allow external unix sockets.
    #[arg(long)]
    ext_unix_sk: bool,
    /// Checkpoint (restore) file locks.
    #[arg(long)]
    file_locks: bool,
    /// Link-remap unlinked open files.
    #[arg(long)]
    link_remap: bool,
    /// Let CRIU dump and restore the tree's cgroups.
    #[arg(long)]
    manage_cgroups: bool,
    /// Allow device files to be replaced by similar ones.
    #[arg(long)]
    evasive_devices: bool,
    /// Treat external mounts as external automatically.
    #[arg(long)]
    auto_ext_mnt: bool,
    /// Do not fail on sysctls the kernel lacks.
    #[arg(long)]
    weak_sysctls: bool,
}

impl CheckpointOptions {
    fn apply(&self, opts: &mut Options<'_>) {
        opts.shell_job(self.shell_job)
            .tcp_established(self.tcp_established)
            .tcp_close(self.tcp_close)
            .ext_unix_sk(self.ext_unix_sk)
            .file_locks(self.file_locks)
            .link_remap(self.link_remap)
            .manage_cgroups(self.manage_cgroups)
            .evasive_devices(self.evasive_devices)
            .auto_ext_mnt(self.auto_ext_mnt)
            .weak_sysctls(self.weak_sysctls);
    }
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
        #[command(flatten)]
        options: CheckpointOptions,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Restore a checkpoint, detached; prints the restored pid.
    Restore {
        /// Where the images are.
        #[arg(long)]
        images_dir: PathBuf,
        /// Give up (killing the half-restored tree) after this many seconds;
        /// 0 waits forever.
        #[arg(long, default_value_t = 60)]
        deadline_secs: u64,
        #[command(flatten)]
        options: CheckpointOptions,
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
    /// Show what a checkpoint holds: processes, command lines, environment,
    /// memory, files, sockets, namespaces, mounts, statistics.
    Inspect {
        /// The images directory.
        #[arg(long)]
        images_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print one image as CRIU's `crit decode` does.
    Decode {
        /// The images directory.
        #[arg(long)]
        images_dir: PathBuf,
        /// The image's file name (`pstree.img`).
        #[arg(long)]
        image: String,
        /// As `crit decode --pretty`: CRIU's field formats (hex, flags, addresses).
        #[arg(long)]
        pretty: bool,
    },
}

fn open_or_create(path: &Path) -> criu::Result<ImagesDir> {
    if path.exists() {
        ImagesDir::open(path)
    } else {
        ImagesDir::create(path)
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn dump(
    pid: i32,
    images_dir: &Path,
    leave_running: bool,
    options: &CheckpointOptions,
    json: bool,
) -> CliResult {
    let images = open_or_create(images_dir)?;
    let mut opts = Options::new();
    opts.pid(pid)
        .images_dir(&images)
        .log_file("dump.log")
        .leave_running(leave_running);
    options.apply(&mut opts);
    let report = Criu::new().dump(&mut opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
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
    Ok(())
}

fn restore(
    images_dir: &Path,
    deadline_secs: u64,
    options: &CheckpointOptions,
    json: bool,
) -> CliResult {
    let images = ImagesDir::open(images_dir)?;
    let mut opts = Options::new();
    opts.images_dir(&images).log_file("restore.log");
    if deadline_secs > 0 {
        opts.deadline(Duration::from_secs(deadline_secs));
    }
    options.apply(&mut opts);
    let report = Criu::new().restore(&mut opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.pid);
    }
    Ok(())
}

fn check() -> CliResult {
    let criu = Criu::new();
    criu.check()?;
    let version = criu.version()?;
    let features = criu.feature_check()?;
    println!(
        "{}",
        serde_json::json!({ "ok": true, "version": version.to_string(), "features": features })
    );
    Ok(())
}

fn stats(images_dir: &Path) -> CliResult {
    let images = ImagesDir::open(images_dir)?;
    let dump = images.dump_stats()?.and_then(|s| s.dump);
    let restore = images.restore_stats()?.and_then(|s| s.restore);
    println!(
        "{}",
        serde_json::json!({ "dump": dump, "restore": restore })
    );
    Ok(())
}

fn inspect(images_dir: &Path, json: bool) -> CliResult {
    let inspection = Checkpoint::open(images_dir).inspect()?;
    if json {
        println!("{}", serde_json::to_string(&inspection)?);
    } else {
        print!("{inspection}");
    }
    Ok(())
}

fn decode(images_dir: &Path, image: &str, pretty: bool) -> CliResult {
    let image = Checkpoint::open(images_dir).image(image)?;
    if pretty {
        println!(
            "{}",
            serde_json::to_string_pretty(&crit::render(&image, crit::Style::Pretty))?
        );
    } else {
        println!("{}", crit::render(&image, crit::Style::Plain));
    }
    Ok(())
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Dump {
            pid,
            images_dir,
            leave_running,
            options,
            json,
        } => dump(pid, &images_dir, leave_running, &options, json),
        Command::Restore {
            images_dir,
            deadline_secs,
            options,
            json,
        } => restore(&images_dir, deadline_secs, &options, json),
        Command::Check => check(),
        Command::Stats { images_dir } => stats(&images_dir),
        Command::Inspect { images_dir, json } => inspect(&images_dir, json),
        Command::Decode {
            images_dir,
            image,
            pretty,
        } => decode(&images_dir, &image, pretty),
    }
}

fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` ends quietly, as for any CLI.
    // SAFETY: restoring the default disposition of a signal, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
