//! Migrate a live process between two machines, with mutual TLS.
//!
//! ```text
//! host B:  migrate_host receive --listen 0.0.0.0:7700 \
//!              --tls-ca ca.pem --tls-cert b.pem --tls-key b-key.pem [--peer-name hosta]
//! host A:  migrate_host send --pid 1234 --to hostb:7700 --strategy page-server \
//!              --tls-ca ca.pem --tls-cert a.pem --tls-key a-key.pem [--json cost.json]
//! ```
//!
//! Both hosts present a certificate signed by the CA in `--tls-ca` and
//! refuse a peer that does not; CRIU's own connections (page server, lazy
//! pages) use TLS with the same files. `receive` waits for one source that
//! authenticates (a refused connection is reported and the wait goes on),
//! restores the tree as its child and waits for it to exit (`--detach`:
//! leave it running and exit). `send` shows the images still to go, then
//! the cost table of `examples/migrate` (the downtime is the source's view:
//! from stopping the tree to the destination's "restored"). README.md,
//! "Migrating between two machines", says how to make the certificates and
//! which ports to open.
//!
//! Ctrl-C (SIGINT), SIGTERM or SIGHUP cancel a migration in flight
//! ([`criu::migrate::Cancel`]): the source resumes its process, the
//! destination removes what it received and kills a half-restored tree,
//! and the command says so and exits with status 130.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use criu::migrate::{self, Cancel, DestConfig, Link, SourceConfig, Strategy};
use criu::tls::{TlsConfig, TlsFiles};
use criu::Criu;
use criu_testkit::hosts::netns_of;
use criu_testkit::measure::{rss_bytes, Cost, Row};
use nix::sys::signal::{SigSet, Signal};

mod cli;
use cli::{print_table, write_json, Bar};

#[derive(Parser)]
#[command(about = "Migrate a live process between two machines with CRIU, over mutual TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// On the destination: wait for a source, restore what it sends.
    Receive(ReceiveArgs),
    /// On the source: move the process tree of `--pid` to `--to`.
    Send(SendArgs),
}

/// The secure channel's files, or an explicit `--plain`.
#[derive(Args)]
struct Security {
    /// The CA certificate both hosts trust (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This host's certificate, signed by the CA (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This host's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Accept only a peer whose certificate names this host (besides
    /// chaining to the CA): the destination's name on the source, the
    /// source's on the destination.
    #[arg(long, requires = "tls_ca")]
    peer_name: Option<String>,
    /// Plain TCP: memory crosses in clear and anyone who reaches the port
    /// is heard. For a network you trust entirely.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    plain: bool,
    /// CRIU dumps and restores a process started from a terminal.
    #[arg(long)]
    shell_job: bool,
}

impl Security {
    fn link(&self) -> Result<Link, String> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key, self.plain) {
            (Some(ca), Some(cert), Some(key), false) => {
                let config = TlsConfig::new(TlsFiles::new(ca, cert, key));
                let config = match &self.peer_name {
                    Some(host) => config.and_then(|c| c.peer_name(host)),
                    None => config,
                };
                config
                    .map(|c| Link::Tls(Box::new(c)))
                    .map_err(|e| e.to_string())
            }
            (None, None, None, true) => Ok(Link::Plain),
            _ => Err(
                "give --tls-ca, --tls-cert and --tls-key (or --plain on a trusted network)".into(),
            ),
        }
    }
}

#[derive(Args)]
struct ReceiveArgs {
    /// The address to listen on (the source connects here).
    #[arg(long)]
    listen: SocketAddr,
    /// Where the images go (default: in memory, a private tmpfs directory
    /// removed afterwards: no disk in the path).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Leave the restored tree running and exit, instead of waiting for it.
    #[arg(long)]
    detach: bool,
    /// Give up after the first refused connection instead of waiting on.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    security: Security,
}

#[derive(Args)]
struct SendArgs {
    /// The root of the process tree to move.
    #[arg(long)]
    pid: i32,
    /// The destination's `receive --listen` address (HOST:PORT).
    #[arg(long)]
    to: String,
    /// `stop-and-copy`, `page-server` or `lazy`.
    #[arg(long, default_value = "stop-and-copy")]
    strategy: Strategy,
    /// Where the images are written (default: in memory, a private tmpfs
    /// directory removed afterwards: no disk in the path).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also write the cost as JSON (an array of one row) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    security: Security,
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every
/// thread started after), and cancels `cancel` from a thread of its own
/// when one arrives. Call it first, before any other thread starts.
fn cancel_on_signals(cancel: &Cancel) -> Result<(), String> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| format!("blocking SIGINT/SIGTERM/SIGHUP: {e}"))?;
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            eprintln!("{signal}: cancelling the migration");
            cancel.cancel();
        }
    });
    Ok(())
}

fn receive(args: ReceiveArgs, cancel: &Cancel) -> Result<(), String> {
    let link = args.security.link()?;
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("listening on {}: {e}", args.listen))?;
    eprintln!("waiting for a source on {} ({})", args.listen, link.name());
    // Polled, so that a signal ends the wait.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let (mut stream, peer) = loop {
        if cancel.is_cancelled() {
            return Err("no source came".into());
        }
        match link.accept(&listener) {
            Ok(s) => break s,
            Err(criu::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                std::thread::sleep(POLL);
            }
            Err(e) if !args.once => eprintln!("refused a connection: {e}"),
            Err(e) => return Err(format!("refused a connection: {e}")),
        }
    };
    eprintln!("{peer} authenticated; receiving");
    let shell_job = args.security.shell_job;
    let cfg = match &args.work_dir {
        Some(dir) => DestConfig::new().work_dir(dir),
        None => DestConfig::new(),
    };
    let cfg = cfg.cancel(cancel).customize(move |o| {
        o.shell_job(shell_job);
    });
    let report = migrate::receive(&Criu::new(), &mut *stream, cfg).map_err(|e| e.to_string())?;
    println!(
        "restored pid {} ({}, {:.1} MiB of images, restore {:.1} ms)",
        report.child.pid(),
        report.strategy,
        report.transfer.bytes as f64 / 1048576.0,
        report.restore.wall_time.as_secs_f64() * 1000.0
    );
    if args.detach {
        report.child.detach();
        return Ok(());
    }
    let mut child = report.child;
    loop {
        let status = child
            .try_wait()
            .map_err(|e| format!("waiting for the restored tree: {e}"))?;
        if let Some(status) = status {
            eprintln!("the restored tree exited: {status}");
            return Ok(());
        }
        if cancel.is_cancelled() {
            // The migration is over: a signal ends the wait, not the tree.
            let pid = child.detach();
            eprintln!("left the restored tree (pid {pid}) running");
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// How often the waits of `receive` look for a signal.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn send(args: SendArgs, cancel: &Cancel) -> Result<(), String> {
    let link = args.security.link()?;
    let to = args
        .to
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", args.to))?
        .next()
        .ok_or_else(|| format!("{} has no address", args.to))?;
    let (rss, netns) = (rss_bytes(args.pid), netns_of(args.pid).unwrap_or(0));
    let shell_job = args.security.shell_job;
    let cfg = match &args.work_dir {
        Some(dir) => SourceConfig::new(args.strategy).work_dir(dir),
        None => SourceConfig::new(args.strategy),
    };
    let cfg = cfg
        .cancel(cancel)
        .progress(Bar::new().callback())
        .customize(move |o| {
            o.shell_job(shell_job);
        });
    let mut stream = link
        .connect(to, std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let src =
        migrate::send(&Criu::new(), args.pid, &mut *stream, cfg).map_err(|e| e.to_string())?;
    let of = Row::of(&src, link.name(), &format!("pid {}", args.pid));
    let row = Row {
        cost: Cost {
            rss_bytes: rss,
            ..of.cost
        },
        // The destination reported the tree restored and running.
        continued: true,
        source_netns: netns,
        ..of
    };
    print_table(std::slice::from_ref(&row));
    match &args.json {
        Some(path) => write_json(path, &[row]),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cancel = Cancel::new();
    if let Err(e) = cancel_on_signals(&cancel) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Receive(a) => receive(a, &cancel),
        Command::Send(a) => send(a, &cancel),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cancel.is_cancelled() => {
            eprintln!("cancelled: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
