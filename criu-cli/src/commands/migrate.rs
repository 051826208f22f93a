//! `send` and `receive`: a live process tree moved between two machines
//! (every strategy; mutual TLS unless `--plain`, with `--peer-name` the
//! peer's certificate must name the expected host). A signal cancels the
//! migration through criu-rs's [`criu::migrate::Cancel`] (see
//! `crate::signals`); what became of the source is read from the error's
//! [`criu::SourceState`], never from its wording.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criu::migrate::{
    AddressMove, Cancel, Connections, DestConfig, Link, SourceConfig, SourceReport, Strategy,
    Stream,
};
use criu::tls::{TlsConfig, TlsFiles};
use criu::{Criu, NetworkLock, SourceState};
use serde_json::json;

use crate::args::{ReceiveArgs, Security, SendArgs};
use crate::criu_flags::CriuFlags;
use crate::error::{CliError, CliResult, Exit};
use crate::preflight::{self, Host, Reply, Request};
use crate::progress::Bar;
use crate::signals::Interrupts;

/// The link `--plain` or the three `--tls-*` files (and `--peer-name`)
/// ask for.
pub(super) fn link(s: &Security) -> CliResult<Link> {
    match (&s.tls_ca, &s.tls_cert, &s.tls_key, s.plain) {
        (Some(ca), Some(cert), Some(key), false) => {
            let mut tls = TlsConfig::new(TlsFiles::new(ca, cert, key))?;
            if let Some(name) = &s.peer_name {
                tls = tls.peer_name(name).map_err(|e| {
                    CliError::usage(e.to_string())
                        .hint("--peer-name takes a DNS name or an IP address")
                })?;
            }
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

/// Catches SIGINT, SIGTERM and SIGHUP for the rest of the command.
pub(super) fn interrupts() -> CliResult<Interrupts> {
    // A write to a broken connection must fail with EPIPE, not kill this
    // process with SIGPIPE (main restores SIGPIPE's default for pipes into
    // `head`): a migration that dies that way leaves the source stopped.
    // SAFETY: setting a signal's disposition to ignore.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Interrupts::catch().map_err(|e| CliError::io("catching SIGINT, SIGTERM and SIGHUP", e))
}

/// The error of a command interrupted by `sig` outside the migration
/// itself; `what` says what became of the process.
pub(super) fn interrupted(sig: &str, what: &str) -> CliError {
    let mut e = CliError::new(Exit::Interrupted, format!("interrupted by {sig}: {what}"));
    e.signal = Some(sig.to_string());
    e
}

/// Connects to the destination at `to` as [`Link::connect`] does, also
/// giving a clone of the TCP socket (for [`Interrupts::stalled_peer`]); a
/// refusal is exit 4, with a hint naming `waiting` (the command that must
/// run there).
pub(super) fn connect(
    link: &Link,
    to: SocketAddr,
    s: &Security,
    waiting: &str,
) -> CliResult<(Stream, TcpStream)> {
    let refused = |e: criu::Error| {
        let tls = matches!(e, criu::Error::Tls { .. });
        let mut err = CliError::from(e);
        err.exit = Exit::Peer;
        match (tls, &s.peer_name) {
            (false, _) => err.hint(format!(
                "is `criu-rs {waiting} ...` running on {to}, and the port open?"
            )),
            (true, Some(name)) => err.hint(format!(
                "the destination's certificate must be of the --tls-ca CA and name {name} \
                 (--peer-name) in its subject alternative names"
            )),
            (true, None) => err,
        }
    };
    let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .map_err(|e| refused(criu::Error::io(format!("connecting to {to}"), e)))?;
    let clone = tcp
        .try_clone()
        .map_err(|e| CliError::io("duplicating the connection's socket", e))?;
    let stream: Stream = match link {
        Link::Tls(tls) => Box::new(tls.connect(tcp).map_err(refused)?),
        _ => Box::new(tcp),
    };
    Ok((stream, clone))
}

/// Waits until a source connects to `listener`, or a signal comes.
pub(super) fn wait_for_source(listener: &TcpListener, signals: &Interrupts) -> CliResult {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        if let Some(sig) = signals.caught() {
            return Err(interrupted(
                sig,
                "no source had connected; nothing was received",
            ));
        }
        // SAFETY: poll(2) on one pollfd that lives across the call.
        if unsafe { libc::poll(&mut fd, 1, 200) } > 0 {
            return Ok(());
        }
    }
}

/// Accepts the waiting connection; a refused peer is exit 4.
pub(super) fn accept(
    link: &Link,
    listener: &TcpListener,
    s: &Security,
) -> CliResult<(Stream, SocketAddr)> {
    link.accept(listener).map_err(|e| {
        let tls = matches!(e, criu::Error::Tls { .. });
        let mut err = CliError::from(e);
        err.exit = Exit::Peer;
        match (tls, &s.peer_name) {
            (true, Some(name)) => err.hint(format!(
                "the source's certificate must be of the --tls-ca CA and name {name} \
                 (--peer-name) in its subject alternative names"
            )),
            _ => err,
        }
    })
}

/// A failed migration as the command reports it: the exit code from the
/// error's type (5 when the signal cancelled it), and what became of the
/// source from its [`SourceState`]. `pid` is the source's (on `send`).
pub(super) fn migration_failed(e: criu::Error, sig: Option<&str>, pid: Option<i32>) -> CliError {
    let step = e.migration_error().map(|m| m.step());
    let state = e.source_state();
    let cancelled = e.is_cancelled();
    let mut err = CliError::from(e);
    let fate = fate(state, pid);
    if cancelled {
        let sig = sig.unwrap_or("a signal");
        let at = step.map_or(String::new(), |s| format!(" during the {s}"));
        err.message = format!("interrupted by {sig}{at}: {fate}\n{}", err.message);
        err.signal = Some(sig.to_string());
    } else {
        err.message = format!("{}\n{fate}", err.message);
    }
    err
}

/// What became of the source, in words.
fn fate(state: Option<SourceState>, pid: Option<i32>) -> String {
    let tree = pid.map_or("the source tree".to_string(), |p| {
        format!("the source tree (pid {p})")
    });
    match state {
        Some(SourceState::Untouched) => format!("nothing was stopped; {tree} runs on"),
        Some(SourceState::Resumed) => {
            format!("{tree} resumed where it was; no copy runs on the destination")
        }
        Some(SourceState::Killed) => {
            format!("the destination runs the tree; {tree} was removed")
        }
        Some(SourceState::PossiblyRunningTwice) => format!(
            "{tree} resumed, and the destination may run its copy too: check it before relying on one"
        ),
        _ => "what was received here is removed; the source resumes its tree when it hears of it"
            .to_string(),
    }
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

/// Runs `f`; with `--json`, a failure is written there too, as an
/// `{"error": ...}` row (see `CliError::to_json`).
pub(super) fn reporting_errors<T>(
    json: Option<&Path>,
    f: impl FnOnce() -> CliResult<T>,
) -> CliResult<T> {
    let r = f();
    if let (Err(e), Some(path)) = (&r, json) {
        let _ = write_json(path, &e.to_json());
    }
    r
}

/// The user's address hook, run once per step with the step's name; the
/// token a signal to the command cancels.
struct HookProgram(std::path::PathBuf, Cancel);

impl HookProgram {
    fn run(&self, step: &str) -> std::io::Result<()> {
        use std::os::unix::process::ExitStatusExt;
        let status = Command::new(&self.0).arg(step).status()?;
        if status.success() {
            return Ok(());
        }
        if status
            .signal()
            .is_some_and(|s| [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&s))
        {
            // Ctrl-C reaches the whole foreground job: the hook died of
            // the signal that is also cancelling this command, and our
            // catcher (a thread) may not have seen it yet. Give it a
            // moment, so that the failure is reported as the
            // interruption it is (exit 5), not as the hook's.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !self.1.is_cancelled() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Err(std::io::Error::other(format!(
            "{} {step} failed: {status}",
            self.0.display()
        )))
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

/// A `--work-dir` must be an existing directory: the migration writes its
/// images under it, and would otherwise fail only once under way (as a
/// failed handshake with the peer).
fn check_work_dir(dir: Option<&std::path::Path>) -> CliResult {
    match dir {
        Some(d) if !d.is_dir() => Err(CliError::usage(format!(
            "--work-dir {}: no such directory",
            d.display()
        ))
        .hint(format!(
            "create it (mkdir -p {}), or leave --work-dir out: the images then go to a \
             private tmpfs directory",
            d.display()
        ))),
        _ => Ok(()),
    }
}

pub(super) fn resolve(to: &str) -> CliResult<SocketAddr> {
    to.to_socket_addrs()
        .map_err(|e| CliError::new(Exit::Peer, format!("resolving {to}: {e}")))?
        .next()
        .ok_or_else(|| CliError::new(Exit::Peer, format!("{to} has no address")))
}

fn source_config<'a>(a: &'a SendArgs, cancel: &Cancel) -> SourceConfig<'a> {
    let mut cfg = match &a.work_dir {
        Some(dir) => SourceConfig::new(a.strategy).work_dir(dir),
        None => SourceConfig::new(a.strategy),
    };
    let flags: CriuFlags = a.criu.clone();
    cfg = cfg.cancel(cancel).customize(move |o| flags.apply(o));
    if a.json.is_none() {
        cfg = cfg.progress(Bar::new("sending images").callback());
    }
    if let Some(d) = a.criu.deadline {
        cfg = cfg.deadline(d);
    }
    if let Some(hook) = &a.address_hook {
        let lock = a.criu.network_lock.map_or(NetworkLock::Skip, Into::into);
        let hook = HookProgram(hook.clone(), cancel.clone());
        cfg = cfg.connections(Connections::new(lock, hook));
    }
    cfg
}

/// Moves `--pid`'s tree to `--to`.
pub fn send(a: SendArgs) -> CliResult {
    reporting_errors(a.json.as_deref(), || send_tree(&a))
}

fn send_tree(a: &SendArgs) -> CliResult {
    a.criu.check_for("send")?;
    check_work_dir(a.work_dir.as_deref())?;
    if a.criu.criu_config.is_some() && a.strategy != Strategy::StopAndCopy {
        return Err(CliError::usage(format!(
            "--criu-config works with --strategy stop-and-copy only: {} passes options of its \
             own (lazy pages, CRIU's TLS) through a CRIU config file, and CRIU reads one",
            a.strategy
        ))
        .hint("use --strategy stop-and-copy, or the flags of `criu-rs send --help`"));
    }
    let link = link(&a.security)?;
    let to = resolve(&a.to)?;
    if a.criu.tcp_established && a.address_hook.is_none() {
        eprintln!(
            "note: --tcp-established without --address-hook: the connections' address must reach \
             the destination by other means before it restores"
        );
    }
    let signals = interrupts()?;
    let untouched = format!("nothing was stopped (pid {} runs on)", a.pid);
    let (mut stream, socket) = connect(&link, to, &a.security, "receive --listen")?;
    signals.stalled_peer(socket);
    if let Some(sig) = signals.caught() {
        return Err(interrupted(sig, &format!("while connecting; {untouched}")));
    }
    if !a.no_preflight {
        let wake = stream.interrupter();
        let r = signals.during(wake, || preflight_source(a, &mut stream));
        if let Some(sig) = signals.caught() {
            return Err(interrupted(
                sig,
                &format!("during the pre-flight exchange; {untouched}"),
            ));
        }
        r?;
    }
    let cfg = source_config(a, signals.token());
    let report = criu::migrate::send(&Criu::new(), a.pid, &mut *stream, cfg)
        .map_err(|e| migration_failed(e, signals.caught(), Some(a.pid)));
    signals.settled();
    let report = report?;
    if let Some(sig) = signals.caught() {
        eprintln!(
            "note: {sig} came once the destination had restored the tree: the move completed"
        );
    }
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
fn dest_config<'a>(
    a: &'a ReceiveArgs,
    tcp_addresses: Vec<String>,
    cancel: &Cancel,
) -> DestConfig<'a> {
    let cfg = match &a.work_dir {
        Some(dir) => DestConfig::new().work_dir(dir),
        None => DestConfig::new(),
    }
    .cancel(cancel);
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
    let restored = reporting_errors(a.json.as_deref(), || receive_tree(&a))?;
    restored.confirmed("tree", "process")
}

/// A restore here, as far as the source said.
pub(super) struct Restored {
    /// The restored tree's root (or the container's name).
    pub what: String,
    /// The source confirmed that it stopped its copy.
    pub source_confirmed: bool,
}

impl Restored {
    /// Exit 8 when the source never confirmed: the copy here runs (its
    /// report was written), and the source's may too. A script must not
    /// take that for a clean move.
    pub(super) fn confirmed(self, kind: &str, theirs: &str) -> CliResult {
        if self.source_confirmed {
            return Ok(());
        }
        Err(CliError::new(
            Exit::Unconfirmed,
            format!(
                "the {kind} was restored here ({}), but the source never confirmed that it \
                 stopped its own copy (the stream ended first): two copies may run",
                self.what
            ),
        )
        .hint(format!(
            "check the source host: if its {theirs} runs too, stop one of the two"
        )))
    }
}

/// Waits for sources until one passes pre-flight (or, with `--once`, the
/// first fails); its stream, address and the tree's TCP addresses.
fn next_source(
    a: &ReceiveArgs,
    link: &Link,
    listener: &TcpListener,
    signals: &Interrupts,
) -> CliResult<(Stream, SocketAddr, Vec<String>)> {
    loop {
        wait_for_source(listener, signals)?;
        let refused = match accept(link, listener, &a.security) {
            Ok((stream, peer)) if a.no_preflight => return Ok((stream, peer, Vec::new())),
            Ok((mut stream, peer)) => {
                let wake = stream.interrupter();
                let r = signals.during(wake, || preflight_dest(a, &mut stream));
                if let Some(sig) = signals.caught() {
                    return Err(interrupted(
                        sig,
                        "during the pre-flight exchange; nothing was received",
                    ));
                }
                match r {
                    Ok(req) => return Ok((stream, peer, req.tcp_addresses)),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if a.once {
            return Err(refused);
        }
        eprintln!("refused a source: {}", refused.message);
    }
}

fn receive_tree(a: &ReceiveArgs) -> CliResult<Restored> {
    a.criu.check_for("receive")?;
    check_work_dir(a.work_dir.as_deref())?;
    let link = link(&a.security)?;
    let listener = listen(a.listen)?;
    let signals = interrupts()?;
    eprintln!("waiting for a source on {} ({})", a.listen, link.name());
    let (mut stream, peer, tcp_addresses) = next_source(a, &link, &listener, &signals)?;
    eprintln!("{peer} authenticated; receiving");
    let cfg = dest_config(a, tcp_addresses, signals.token());
    let report = criu::migrate::receive(&Criu::new(), &mut *stream, cfg)
        .map_err(|e| migration_failed(e, signals.caught(), None))?;
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
                "peer": peer.to_string(),
            }),
        )?;
    }
    let restored = Restored {
        what: format!("pid {pid}"),
        source_confirmed: report.source_confirmed,
    };
    if a.detach {
        report.child.detach();
        return Ok(restored);
    }
    signals.exit_leaving(pid);
    if let Some(sig) = signals.caught() {
        report.child.detach();
        return Err(interrupted(
            sig,
            &format!("it came once the tree was restored here: pid {pid} keeps running"),
        ));
    }
    let mut child = report.child;
    let status = child
        .wait()
        .map_err(|e| CliError::io("waiting for the restored tree", e))?;
    eprintln!("the restored tree exited: {status}");
    Ok(restored)
}
