//! The command line, as clap derives it (the man page and the shell
//! completions are generated from it too).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use criu::migrate::Strategy;

use crate::criu_flags::CriuFlags;
use crate::error::EXIT_CODES;

const EXAMPLES: &str = "\
Examples:
  criu-rs check
  criu-rs dump --pid 1234 --images-dir /var/tmp/ck --tcp-established
  criu-rs restore --images-dir /var/tmp/ck --tcp-established
  criu-rs inspect --images-dir /var/tmp/ck
  criu-rs x /var/tmp/ck ps
  criu-rs decode -i /var/tmp/ck/pstree.img --pretty
  criu-rs decode -i /var/tmp/ck/core-1234.img | criu-rs encode -o core.img
  criu-rs export --images-dir /var/tmp/ck -o ck.tar.gz
  criu-rs push --images-dir /var/tmp/ck registry.example:5000/ck/app:1
  criu-rs pull registry.example:5000/ck/app:1 --target /var/tmp/ck2
  criu-rs receive --listen 0.0.0.0:7700 --tls-ca ca.pem --tls-cert b.pem --tls-key b-key.pem
  criu-rs send --pid 1234 --to hostb:7700 --tls-ca ca.pem --tls-cert a.pem --tls-key a-key.pem";

/// The whole command line.
#[derive(Parser, Debug)]
#[command(
    name = "criu-rs",
    version,
    about = "Checkpoint, restore, inspect and migrate Linux processes with CRIU",
    long_about = "Checkpoint and restore Linux process trees with CRIU; look inside \
                  checkpoints as CRIU's crit does (and write images back from crit's JSON); \
                  pack checkpoints as archives and OCI images; move a live process tree to \
                  another machine over mutual TLS. Most commands need root.",
    after_help = EXAMPLES,
    after_long_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"),
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command line with what the derive cannot say: every subcommand's
/// long help (`--help`, and so its man page) ends with its examples and
/// the exit codes, as the top level's does.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sub| {
        let examples = sub
            .get_after_help()
            .map(ToString::to_string)
            .unwrap_or_default();
        sub.after_long_help(format!("{examples}\n\n{EXIT_CODES}"))
    })
}

/// This process's command line, parsed with [`command`] (exits with
/// clap's message and status 2 when it is wrong).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check that CRIU works here; print its version and features.
    #[command(after_help = "Example:\n  criu-rs check --json")]
    Check(JsonFlag),
    /// Checkpoint a process tree into a directory.
    #[command(
        after_help = "Examples:\n  criu-rs dump --pid 1234 --images-dir /var/tmp/ck\n  \
                      criu-rs dump --pid 1234 --images-dir /var/tmp/ck --leave-running --tcp-established --json"
    )]
    Dump(DumpArgs),
    /// Restore a checkpoint (detached: the tree is not our child); prints its pid.
    #[command(
        after_help = "Example:\n  criu-rs restore --images-dir /var/tmp/ck --deadline 30s\n\n\
                      The checkpoint's pids must be free here, and its files at the same paths."
    )]
    Restore(RestoreArgs),
    /// Print CRIU's statistics (dump and restore) of an images directory.
    #[command(after_help = "Example:\n  criu-rs stats --images-dir /var/tmp/ck --json")]
    Stats(DirArgs),
    /// Show what a checkpoint holds: processes, command lines, environment,
    /// memory, files, sockets, namespaces, mounts, statistics.
    #[command(after_help = "Example:\n  criu-rs inspect --images-dir /var/tmp/ck")]
    Inspect(DirArgs),
    /// crit decode: print an image as JSON, as CRIU's crit does.
    #[command(
        after_help = "Examples:\n  criu-rs decode -i /var/tmp/ck/pstree.img\n  \
                      criu-rs decode -i /var/tmp/ck/files.img --pretty -o files.json"
    )]
    Decode(DecodeArgs),
    /// crit encode: write an image from crit's JSON (plain or --pretty),
    /// byte for byte as crit does.
    #[command(
        after_help = "Example:\n  criu-rs decode -i core-1.img | sed 's/\"comm\": \"a\"/\"comm\": \"b\"/' | criu-rs encode -o core-1.img"
    )]
    Encode(EncodeArgs),
    /// crit show: an image as indented JSON with CRIU's field formats.
    #[command(after_help = "Example:\n  criu-rs show /var/tmp/ck/mm-1234.img")]
    Show(ShowArgs),
    /// crit info: an image's magic and number of entries.
    #[command(after_help = "Example:\n  criu-rs info /var/tmp/ck/pstree.img")]
    Info(InfoArgs),
    /// crit x: explore a checkpoint (ps, fds, mems, rss), as crit prints it.
    #[command(after_help = "Example:\n  criu-rs x /var/tmp/ck ps")]
    X(ExploreArgs),
    /// Pack a checkpoint as an archive in the container engines' layout
    /// (Podman, CRI-O, checkpointctl).
    #[command(after_help = "Example:\n  criu-rs export --images-dir /var/tmp/ck -o ck.tar.gz")]
    Export(ExportArgs),
    /// Unpack a checkpoint archive (tar, gzip or zstd) into a directory.
    #[command(after_help = "Example:\n  criu-rs import -i ck.tar.gz --target /var/tmp/ck2")]
    Import(ImportArgs),
    /// Push a checkpoint as an OCI image, to a registry or an OCI layout.
    #[command(
        after_help = "Examples:\n  criu-rs push --images-dir /var/tmp/ck localhost:5000/ck/app:1 --plain-http\n  \
                      criu-rs push --images-dir /var/tmp/ck oci:/var/tmp/layout:app"
    )]
    Push(PushArgs),
    /// Pull a checkpoint image from a registry or an OCI layout and unpack it.
    #[command(
        after_help = "Examples:\n  criu-rs pull localhost:5000/ck/app:1 --target /var/tmp/ck2 --plain-http\n  \
                      criu-rs pull oci:/var/tmp/layout:app --target /var/tmp/ck2"
    )]
    Pull(PullArgs),
    /// On the source: move the process tree of --pid to a `receive`.
    #[command(
        after_help = "Example:\n  criu-rs send --pid 1234 --to hostb:7700 --strategy page-server \\\n    \
                      --tls-ca ca.pem --tls-cert a.pem --tls-key a-key.pem\n\n\
                      SIGINT, SIGTERM or SIGHUP before the destination restored resumes the source."
    )]
    Send(SendArgs),
    /// On the destination: wait for a `send`, restore what it sends.
    #[command(
        after_help = "Example:\n  criu-rs receive --listen 0.0.0.0:7700 --detach \\\n    \
                      --tls-ca ca.pem --tls-cert b.pem --tls-key b-key.pem\n\n\
                      The tree's pids must be free here, and its files at the same paths."
    )]
    Receive(ReceiveArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  criu-rs completions bash > /etc/bash_completion.d/criu-rs"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one per command into a directory.
    #[command(after_help = "Example:\n  criu-rs man | man -l -")]
    Man {
        /// Write criu-rs.1 and criu-rs-COMMAND.1 here instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `--json` alone.
#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A directory of images and `--json`.
#[derive(Args, Debug)]
pub struct DirArgs {
    /// The images directory.
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The root of the tree.
    #[arg(long, short = 't')]
    pub pid: i32,
    /// Where the images go (created 0700 if missing; must hold no checkpoint).
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// The CRIU options.
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Where the images are.
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// The CRIU options.
    #[command(flatten)]
    pub criu: CriuFlags,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// The image (stdin when absent).
    #[arg(long = "in", short = 'i', value_name = "IMAGE")]
    pub input: Option<PathBuf>,
    /// Where the JSON goes (stdout when absent).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Indented, with CRIU's field formats (hex, flags, addresses, devices).
    #[arg(long)]
    pub pretty: bool,
}

/// `encode`.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// crit's JSON of the image (stdin when absent).
    #[arg(long = "in", short = 'i', value_name = "JSON")]
    pub input: Option<PathBuf>,
    /// Where the image goes (stdout when absent).
    #[arg(long, short = 'o', value_name = "IMAGE")]
    pub out: Option<PathBuf>,
}

/// `show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The image.
    #[arg(value_name = "IMAGE")]
    pub input: PathBuf,
    /// Do not show the payload after entries (its size instead).
    #[arg(long)]
    pub nopl: bool,
}

/// `info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The image.
    #[arg(value_name = "IMAGE")]
    pub input: PathBuf,
}

/// `x`.
#[derive(Args, Debug)]
pub struct ExploreArgs {
    /// The images directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// What to show.
    pub what: Explore,
}

/// What `x` shows.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Explore {
    /// The process tree: pid, process group, session, command.
    Ps,
    /// Each task's open files, cwd and root.
    Fds,
    /// Each task's memory mappings.
    Mems,
    /// Each task's dumped pages, against its mappings.
    Rss,
}

/// Compression of an exported archive.
#[derive(ValueEnum, Debug, Clone, Copy, Default)]
pub enum CompressionArg {
    /// Plain tar.
    None,
    /// gzip (what Podman's --compress gzip writes).
    #[default]
    Gzip,
}

impl From<CompressionArg> for criu_oci::Compression {
    fn from(c: CompressionArg) -> criu_oci::Compression {
        match c {
            CompressionArg::None => criu_oci::Compression::None,
            CompressionArg::Gzip => criu_oci::Compression::Gzip,
        }
    }
}

/// What an archive or image says about the checkpoint.
#[derive(Args, Debug)]
pub struct MetaArgs {
    /// The name recorded in the archive (config.dump's name).
    #[arg(long, default_value = "checkpoint")]
    pub name: String,
    /// Record this process's command line and cwd (read now, from /proc).
    #[arg(long)]
    pub pid: Option<i32>,
}

/// `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The images directory (from `criu-rs dump`).
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// The archive to write (must not exist).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// How the archive is compressed.
    #[arg(long, default_value = "gzip")]
    pub compression: CompressionArg,
    /// What the archive records.
    #[command(flatten)]
    pub meta: MetaArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The archive (tar, tar.gz or tar.zst).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// The directory to unpack into (created; must not exist). CRIU's
    /// images land in its checkpoint/ subdirectory.
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How to reach a registry.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Plain HTTP instead of HTTPS (a registry on a private network).
    #[arg(long)]
    pub plain_http: bool,
    /// A PEM CA certificate to trust besides the system's.
    #[arg(long, value_name = "PEM")]
    pub registry_ca: Option<PathBuf>,
    /// User name for basic authentication; the password is read from
    /// CRIU_RS_REGISTRY_PASSWORD.
    #[arg(long)]
    pub username: Option<String>,
}

/// `push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The images directory (from `criu-rs dump`).
    #[arg(long, short = 'D', value_name = "DIR")]
    pub images_dir: PathBuf,
    /// HOST[:PORT]/REPO:TAG, or oci:DIR:TAG for an OCI layout directory.
    pub reference: String,
    /// How the layer is compressed.
    #[arg(long, default_value = "gzip")]
    pub compression: CompressionArg,
    /// What the image records.
    #[command(flatten)]
    pub meta: MetaArgs,
    /// How to reach the registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// HOST[:PORT]/REPO:TAG, or oci:DIR:TAG for an OCI layout directory.
    pub reference: String,
    /// The directory to unpack into (created; must not exist). CRIU's
    /// images land in its checkpoint/ subdirectory.
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// How to reach the registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The secure channel's files, or an explicit `--plain`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Security")]
pub struct Security {
    /// The CA certificate both hosts trust (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This host's certificate, signed by the CA (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// This host's private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Require the peer's certificate to name this host (a DNS name or an
    /// IP address of its subject alternative names): on receive, the
    /// source's; on send, the destination's. A peer that does not is
    /// refused before anything is stopped (exit 4). Without it, any
    /// certificate of the --tls-ca CA is accepted.
    #[arg(long, value_name = "NAME")]
    pub peer_name: Option<String>,
    /// Plain TCP, no authentication: memory crosses in clear, and ANYONE
    /// WHO CAN REACH THE PORT CAN HAVE CODE RUN AS ROOT ON THE RECEIVER (a
    /// checkpoint is a program CRIU restores as root). Only on a network
    /// you trust entirely.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key", "peer_name"])]
    pub plain: bool,
}

/// What `send --json` writes (kept stable: fields are added, never renamed).
const SEND_JSON: &str = "\
Also write the report as JSON to this file (\"-\" for stdout: the summary then goes to \
stderr), one object on one line. On success, criu-rs's SourceReport: \"strategy\", \"pid\", \
\"restored_pid\", \"dump\" (CRIU's dump statistics), \"transfer\" (\"files\", \"bytes\", ...), \
\"page_server_bytes\", \"restore_wall\", \"stopped_to_restored\" (the downtime), \"total\" \
(durations in microseconds), \"phases\" (\"freeze_us\", \"frozen_us\", \"memory_dump_us\", \
\"memory_write_us\", \"dump_other_us\", \"transfer_us\", \"restore_us\", \"handoff_us\"), plus \"link\" (\"plain\" or \"tls\") and \"to\" (the destination's \
address). On failure: {\"error\": {\"exit\", \"message\", \"hint\", \"signal\", \"step\", \
\"source_state\", \"cancelled\"}}, \"exit\" being the exit code, \"signal\" the signal that \
interrupted it (or null), and for a failed migration \"step\" (handshake, stop, dump, transfer, \
connections, restore, lazy-pages, confirm) and \"source_state\" (untouched, resumed, killed, \
possibly-running-twice, unknown): what became of the process.";

/// What `receive --json` writes (kept stable: fields are added, never
/// renamed).
const RECEIVE_JSON: &str = "\
Also write the report as JSON to this file (\"-\" for stdout), one object on one line. On \
success: \"restored_pid\", \"strategy\", \"restore\" (CRIU's restore report), \"transfer\" \
(\"files\", \"bytes\", ...), \"source_confirmed\" (false: the source did not confirm it \
stopped its copy, and the command exits 8), \"link\" (\"plain\" or \"tls\"), \"peer\" (the source's address). On \
failure the same {\"error\": {...}} row as send's (see `criu-rs send --help`; \"source_state\" \
is mostly \"unknown\" here: the source decides).";

/// `send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// The root of the process tree to move.
    #[arg(long, short = 't')]
    #[cfg_attr(
        feature = "docker",
        arg(
            required_unless_present = "docker",
            default_value_t = 0,
            hide_default_value = true
        )
    )]
    pub pid: i32,
    /// A Docker container instead (feature `docker`).
    #[cfg(feature = "docker")]
    #[command(flatten)]
    pub docker: crate::commands::docker::DockerSend,
    /// The destination's `receive --listen` address (HOST:PORT).
    #[arg(long)]
    pub to: String,
    /// stop-and-copy, page-server, lazy or pre-copy.
    #[arg(long, default_value = "stop-and-copy")]
    pub strategy: Strategy,
    /// Where the images are written (default: in memory, a private tmpfs
    /// directory removed afterwards: no disk in the path).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Also write the report as JSON to this file ("-" for stdout: then
    /// the summary goes to stderr), one object on one line.
    #[arg(long, value_name = "FILE", long_help = SEND_JSON)]
    pub json: Option<PathBuf>,
    /// With --tcp-established: a program that moves the service address
    /// between the hosts, run with one argument per step: lock,
    /// move-to-dest, announce, and on failure move-back; unlock last (see
    /// criu::migrate::connections for what each step must do).
    #[arg(long, value_name = "PROGRAM", requires = "tcp_established")]
    pub address_hook: Option<PathBuf>,
    /// Skip the pre-flight exchange (CRIU version, pids free, files present,
    /// memory) before the tree is stopped; for a destination that is not
    /// `criu-rs receive` (the receive must skip it too).
    #[arg(long)]
    pub no_preflight: bool,
    /// The secure channel.
    #[command(flatten)]
    pub security: Security,
    /// The CRIU options.
    #[command(flatten)]
    pub criu: CriuFlags,
}

/// `receive`.
#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// The address to listen on (the source connects here).
    #[arg(long)]
    pub listen: SocketAddr,
    /// A Docker container instead (feature `docker`).
    #[cfg(feature = "docker")]
    #[command(flatten)]
    pub docker: crate::commands::docker::DockerReceive,
    /// Where the images go (default: in memory, a private tmpfs directory
    /// removed afterwards: no disk in the path).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Leave the restored tree running and exit, instead of waiting for it.
    #[arg(long)]
    pub detach: bool,
    /// Give up after the first refused connection (or source refused at
    /// pre-flight) instead of waiting on.
    #[arg(long)]
    pub once: bool,
    /// Skip the pre-flight exchange (for a source that is not `criu-rs
    /// send`; the send must skip it too).
    #[arg(long)]
    pub no_preflight: bool,
    /// Also write the report as JSON to this file ("-" for stdout), one
    /// object on one line.
    #[arg(long, value_name = "FILE", long_help = RECEIVE_JSON)]
    pub json: Option<PathBuf>,
    /// The secure channel.
    #[command(flatten)]
    pub security: Security,
    /// The CRIU options.
    #[command(flatten)]
    pub criu: CriuFlags,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_subcommand_help_has_an_example_and_the_exit_codes() {
        let mut cmd = command();
        cmd.build();
        let mut seen = 0;
        for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let name = sub.get_name().to_string();
            let long = sub.render_long_help().to_string();
            let short = sub.render_help().to_string();
            assert!(long.contains("Example"), "{name} --help has no example");
            assert!(short.contains("Example"), "{name} -h has no example");
            assert!(
                long.contains("Exit codes:\n  0  success"),
                "{name} --help lacks the exit codes"
            );
            seen += 1;
        }
        assert!(seen >= 18, "only {seen} subcommands");
    }
}
