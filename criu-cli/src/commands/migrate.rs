//! `send` and `receive`: a live process tree moved between two machines
//! (every strategy; mutual TLS unless `--plain`). A signal before the
//! destination has restored breaks the connection off, which fails the
//! migration through its ordinary path: the source resumes.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criu::migrate::{AddressMove, Connections, DestConfig, SourceConfig, SourceReport};
use criu::tls::{TlsConfig, TlsFiles};
use criu::{Criu, NetworkLock};
use serde_json::json;

use crate::args::{ReceiveArgs, Security, SendArgs};
use crate::criu_flags::CriuFlags;
use crate::error::{CliError, CliResult, Exit};
use crate::link::{Link, Stream};
use crate::preflight::{self, Host, Reply, Request};
use crate::progress::Bar;
use crate::signals::Interrupts;

pub(super) fn link(s: &Security) -> CliResult<Link> {
    if s.peer_name.is_some() {
        return Err(CliError::usage(
            "--peer-name is not enforced by this build yet (it needs criu-rs's peer-name check)",
        )
        .hint(
            "leave --peer-name out: the peer must still present a certificate of the --tls-ca CA",
        ));
    }
    match (&s.tls_ca, &s.tls_cert, &s.tls_key, s.plain) {
        (Some(ca), Some(cert), Some(key), false) => {
            let tls = TlsConfig::new(TlsFiles::new(ca, cert, key))?;
            Ok(Link::Tls(Box::new(tls)))
        }
        (None, None, None, true) => Ok(Link::Plain),
        _ => Err(
            CliError::usage("give --tls-ca, --tls-cert and --tls-key (or --plain)").hint(
                "README.md, \"Migrating between two machines\", shows how to make the certificates",
            ),
        ),
    }
}

pub(super) fn interrupts() -> CliResult<Interrupts> {
    // A write to a broken connection must fail with EPIPE, not kill this
    // process with SIGPIPE (main restores SIGPIPE's default for pipes into
    // `head`): a migration that dies that way leaves the source stopped.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Interrupts::catch().map_err(|e| CliError::io("catching SIGINT, SIGTERM and SIGHUP", e))
}

pub(super) fn interrupted(sig: &str, what: &str) -> CliError {
    CliError::new(Exit::Interrupted, format!("interrupted by {sig}: {what}"))
}

/// Writes `value` to `path` ("-": stdout).
pub(super) fn write_json(path: &Path, value: &serde_json::Value) -> CliResult {
    let text = value.to_string() + "\n";
    if path == Path::new("-") {
        let _ = std::io::stdout().write_all(text.as_bytes());
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| CliError::io(format!("writing {}", path.display()), e))
}

/// With `--json FILE`: writes `report` there, with the link it went over
/// and the other end's address under `peer_key` (`to` or `peer`).
pub(super) fn write_report(
    json: Option<&Path>,
    report: &impl serde::Serialize,
    link_name: &str,
    peer_key: &str,
    peer: &str,
) -> CliResult {
    let Some(path) = json else {
        return Ok(());
    };
    let mut v = serde_json::to_value(report).unwrap_or_default();
    v["link"] = json!(link_name);
    v[peer_key] = json!(peer);
    write_json(path, &v)
}

/// Listens on `--listen` for the source.
pub(super) fn listen(addr: SocketAddr) -> CliResult<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        CliError::io(format!("listening on {addr}"), e)
            .hint("is another receive (or program) on that port? is the address this host's?")
    })
}

/// The user's address hook, run once per step with the step's name.
struct HookProgram(std::path::PathBuf);

impl HookProgram {
    fn run(&self, step: &str) -> std::io::Result<()> {
        let status = Command::new(&self.0).arg(step).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{} {step} failed: {status}",
                self.0.display()
            )))
        }
    }
}

impl AddressMove for HookProgram {
    fn lock(&self) -> std::io::Result<()> {
        self.run("lock")
    }
    fn move_to_dest(&self) -> std::io::Result<()> {
        self.run("move-to-dest")
    }
    fn announce(&self) -> std::io::Result<()> {
        self.run("announce")
    }
    fn move_back(&self) -> std::io::Result<()> {
        self.run("move-back")
    }
    fn unlock(&self) -> std::io::Result<()> {
        self.run("unlock")
    }
}

pub(super) fn resolve(to: &str) -> CliResult<SocketAddr> {
    to.to_socket_addrs()
        .map_err(|e| CliError::new(Exit::Peer, format!("resolving {to}: {e}")))?
        .next()
        .ok_or_else(|| CliError::new(Exit::Peer, format!("{to} has no address")))
}

fn source_config<'a>(a: &'a SendArgs) -> SourceConfig<'a> {
    let mut cfg = match &a.work_dir {
        Some(dir) => SourceConfig::new(a.strategy).work_dir(dir),
        None => SourceConfig::new(a.strategy),
    };
    let flags: CriuFlags = a.criu.clone();
    cfg = cfg
        .progress(Bar::new().callback())
        .customize(move |o| flags.apply(o));
    if let Some(d) = a.criu.deadline {
        cfg = cfg.deadline(d);
    }
    if let Some(hook) = &a.address_hook {
        let lock = a.criu.network_lock.map_or(NetworkLock::Skip, Into::into);
        cfg = cfg.connections(Connections::new(lock, HookProgram(hook.clone())));
    }
    cfg
}

/// Moves `--pid`'s tree to `--to`.
pub fn send(a: SendArgs) -> CliResult {
    a.criu.check_for("send")?;
    let link = link(&a.security)?;
    let to = resolve(&a.to)?;
    if a.criu.tcp_established && a.address_hook.is_none() {
        eprintln!(
            "note: --tcp-established without --address-hook: the connections' address must reach \
             the destination by other means before it restores"
        );
    }
    let signals = interrupts()?;
    let connected = link.connect(to, Duration::from_secs(10)).map_err(|e| {
        let tls = matches!(e, criu::Error::Tls { .. });
        let mut err = CliError::from(e);
        err.exit = Exit::Peer;
        if !tls {
            err = err.hint(format!(
                "is `criu-rs receive --listen ...` running on {to}, and the port open?"
            ));
        }
        err
    })?;
    signals.watch(connected.canceller);
    let mut stream = connected.stream;
    if !a.no_preflight {
        match (preflight_source(&a, &mut stream), signals.caught()) {
            (Err(_), Some(sig)) => {
                return Err(interrupted(
                    sig,
                    &format!(
                        "during the pre-flight exchange; nothing was stopped (pid {} runs on)",
                        a.pid
                    ),
                ))
            }
            (r, _) => r?,
        }
    }
    let result = criu::migrate::send(&Criu::new(), a.pid, &mut *stream, source_config(&a));
    signals.disarm();
    let report = match (result, signals.caught()) {
        (Err(_), Some(sig)) => {
            return Err(interrupted(
                sig,
                &format!(
                    "the migration was broken off; the source tree (pid {}) resumed",
                    a.pid
                ),
            ))
        }
        (r, _) => r?,
    };
    // With `--json -` stdout is the JSON alone; the summary goes to stderr.
    let to_stdout = a.json.as_deref() != Some(Path::new("-"));
    print_source_report(&report, &link, to, to_stdout);
    write_report(
        a.json.as_deref(),
        &report,
        link.name(),
        "to",
        &to.to_string(),
    )
}

fn preflight_talk(e: std::io::Error) -> CliError {
    CliError::new(Exit::Peer, format!("pre-flight exchange: {e}"))
        .hint("both ends must be criu-rs with pre-flight, or both given --no-preflight")
}

/// Asks the destination whether it can restore the tree; refuses (exit 7)
/// with its reasons and fixes, before anything is stopped.
fn preflight_source(a: &SendArgs, stream: &mut Stream) -> CliResult {
    let version = Criu::new().version()?.to_string();
    let req = preflight::describe(a.pid, &version, &a.strategy.to_string());
    preflight::write_msg(&mut **stream, &req).map_err(preflight_talk)?;
    let reply: Reply = preflight::read_msg(&mut **stream).map_err(preflight_talk)?;
    for n in &reply.notes {
        eprintln!("note (destination): {n}");
    }
    if reply.problems.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = reply
        .problems
        .iter()
        .map(|p| format!("  - {}", p.reason))
        .collect();
    let fixes: Vec<&str> = reply.problems.iter().map(|p| p.fix.as_str()).collect();
    Err(CliError::new(
        Exit::Refused,
        format!(
            "the destination refused the move at pre-flight; nothing was stopped (pid {} runs on):\n{}",
            a.pid,
            reasons.join("\n")
        ),
    )
    .hint(fixes.join("; ")))
}

/// Answers a source's pre-flight request; the request, or an error when it
/// was refused.
fn preflight_dest(a: &ReceiveArgs, stream: &mut Stream) -> CliResult<Request> {
    let criu = Criu::new();
    let host = Host {
        criu_version: criu.version()?.to_string(),
        lazy_pages: criu.feature_check().map(|f| f.lazy_pages).unwrap_or(false),
        images_on: a.work_dir.clone().unwrap_or_else(|| "/dev/shm".into()),
        images_in_memory: a.work_dir.is_none(),
    };
    let req: Request = preflight::read_msg(&mut **stream).map_err(preflight_talk)?;
    let reply = preflight::evaluate(&req, &host);
    preflight::write_msg(&mut **stream, &reply).map_err(preflight_talk)?;
    if reply.problems.is_empty() {
        return Ok(req);
    }
    let reasons: Vec<&str> = reply.problems.iter().map(|p| p.reason.as_str()).collect();
    Err(CliError::new(
        Exit::Refused,
        format!("refused at pre-flight: {}", reasons.join("; ")),
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_source_report(r: &SourceReport, link: &Link, to: SocketAddr, to_stdout: bool) {
    let say = |line: String| {
        if to_stdout {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let p = &r.phases;
    let dump = [p.freeze, p.frozen, p.memory_dump, p.memory_write]
        .into_iter()
        .flatten()
        .sum::<Duration>()
        + p.dump_other;
    say(format!(
        "moved pid {} to {to} ({}, {}): restored there as pid {}",
        r.pid,
        link.name(),
        r.strategy,
        r.restored_pid
    ));
    say(format!(
        "  downtime {:.1} ms: dump {:.1}, transfer {:.1}, restore {:.1}, handoff {:.1} ms",
        ms(r.stopped_to_restored),
        ms(dump),
        ms(p.transfer),
        ms(p.restore),
        ms(p.handoff)
    ));
    say(format!(
        "  images {:.1} MiB in {} files{}; total {:.1} ms",
        r.transfer.bytes as f64 / 1048576.0,
        r.transfer.files,
        if r.page_server_bytes > 0 {
            format!(", pages {:.1} MiB", r.page_server_bytes as f64 / 1048576.0)
        } else {
            String::new()
        },
        ms(r.total)
    ));
}

/// The destination's settings; with `--tcp-established`, the restore
/// first waits for the tree's TCP addresses to arrive (see
/// `preflight::wait_for_addresses`).
fn dest_config(a: &ReceiveArgs, tcp_addresses: Vec<String>) -> DestConfig<'_> {
    let cfg = match &a.work_dir {
        Some(dir) => DestConfig::new().work_dir(dir),
        None => DestConfig::new(),
    };
    let flags: CriuFlags = a.criu.clone();
    let wait = if a.criu.tcp_established {
        tcp_addresses
    } else {
        Vec::new()
    };
    let limit = a.criu.deadline.unwrap_or(Duration::from_secs(30));
    let mut cfg = cfg
        .tcp_established(a.criu.tcp_established)
        .customize(move |o| {
            if !wait.is_empty() && !preflight::wait_for_addresses(&wait, limit) {
                eprintln!(
                    "note: the address(es) {} did not arrive within {limit:?}; restoring anyway",
                    wait.join(", ")
                );
            }
            flags.apply(o)
        });
    if let Some(d) = a.criu.deadline {
        cfg = cfg.deadline(d);
    }
    cfg
}

/// Waits for a source on `--listen`; restores what it sends.
pub fn receive(a: ReceiveArgs) -> CliResult {
    a.criu.check_for("receive")?;
    let link = link(&a.security)?;
    let listener = listen(a.listen)?;
    let signals = interrupts()?;
    signals.watch(
        listener
            .try_clone()
            .map_err(|e| CliError::io("duplicating the listening socket", e))?,
    );
    eprintln!("waiting for a source on {} ({})", a.listen, link.name());
    let (connected, tcp_addresses) = loop {
        let refused = match link.accept(&listener) {
            Ok(mut c) => match a.no_preflight {
                true => break (c, Vec::new()),
                false => match preflight_dest(&a, &mut c.stream) {
                    Ok(req) => break (c, req.tcp_addresses),
                    Err(e) => e,
                },
            },
            Err(_) if signals.caught().is_some() => {
                let sig = signals.caught().unwrap_or("a signal");
                return Err(interrupted(
                    sig,
                    "no source had connected; nothing was received",
                ));
            }
            Err(e) => {
                let mut err = CliError::from(e);
                err.exit = Exit::Peer;
                err
            }
        };
        if a.once {
            return Err(refused);
        }
        eprintln!("refused a source: {}", refused.message);
    };
    eprintln!("{} authenticated; receiving", connected.peer);
    signals.watch(connected.canceller);
    let mut stream = connected.stream;
    let result = criu::migrate::receive(&Criu::new(), &mut *stream, dest_config(&a, tcp_addresses));
    let report = match (result, signals.caught()) {
        (Err(_), Some(sig)) => {
            return Err(interrupted(
                sig,
                "the migration was broken off; what was received is removed, and the source resumes its tree",
            ))
        }
        (r, _) => r?,
    };
    let pid = report.child.pid();
    let to_stdout = a.json.as_deref() != Some(Path::new("-"));
    let line = format!(
        "restored pid {pid} ({}, {:.1} MiB of images, restore {:.1} ms){}",
        report.strategy,
        report.transfer.bytes as f64 / 1048576.0,
        ms(report.restore.wall_time),
        if report.source_confirmed {
            ""
        } else {
            "; the source did not confirm it stopped its copy: check it"
        }
    );
    if to_stdout {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
    if let Some(path) = &a.json {
        write_json(
            path,
            &json!({
                "restored_pid": pid,
                "strategy": report.strategy,
                "restore": report.restore,
                "transfer": report.transfer,
                "source_confirmed": report.source_confirmed,
                "link": link.name(),
                "peer": connected.peer.to_string(),
            }),
        )?;
    }
    if a.detach {
        report.child.detach();
        return Ok(());
    }
    signals.exit_leaving(pid);
    let mut child = report.child;
    let status = child
        .wait()
        .map_err(|e| CliError::io("waiting for the restored tree", e))?;
    eprintln!("the restored tree exited: {status}");
    Ok(())
}
