//! Migration over mutual TLS between two network-namespace hosts: every
//! strategy moves the workload with its memory intact while a capture of
//! the hosts' link never shows that memory (a plaintext run does, so the
//! check can fail); peers without a valid certificate are refused before
//! anything of the migration crosses, and the source runs on. Needs root
//! and tcpdump.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu::tls::{TlsConfig, TlsFiles};
use criu::TlsKind;
use criu_testkit::capture::{count_markers, memory_markers, Capture};
use criu_testkit::certs::{trusting, Ca, Pki, Validity};
use criu_testkit::hosts::{netns_of, TwoHosts};
use criu_testkit::link::{accept_peer, send_to, Link};
use criu_testkit::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);
const MIB: usize = 16;

fn tls(files: &TlsFiles) -> Link {
    Link::Tls(Box::new(TlsConfig::new(files.clone()).unwrap()))
}

fn spawn_on_a(hosts: &TwoHosts, out: &Path) -> Workload {
    hosts
        .a
        .run(|| Workload::spawn_in_pid_ns(BIN.as_ref(), out, Duration::from_millis(1), MIB))
        .unwrap()
        .unwrap()
}

/// Migrates a fresh workload from a to b over `links` while capturing host
/// a's link; checks that it goes on with its memory intact on b. Returns
/// how many memory markers the capture holds.
fn migrate_captured(strategy: Strategy, links: [&Link; 2]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"));
    let sum = w.memory_checksum().unwrap();
    w.wait_for_seq(20, WAIT).unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();

    let capture = Capture::start(&hosts.a, &dir.path().join("link.pcap")).unwrap();
    let run = hosts
        .migrate_over(
            links,
            w.pid(),
            || SourceConfig::new(strategy).work_dir(&src_dir),
            || DestConfig::new().work_dir(&dst_dir),
            None,
        )
        .unwrap();
    let (bytes, dropped) = capture.stop().unwrap();
    let what = format!("{strategy} over {}", links[0].name());
    let src = run.src.unwrap_or_else(|e| panic!("{what}: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        dropped, 0,
        "{what}: tcpdump dropped packets, the check would be void"
    );

    w.reap(WAIT).unwrap();
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    assert_eq!(netns_of(pid).unwrap(), hosts.b.netns_inode().unwrap());
    w.wait_for_seq(w.last_seq() + 20, WAIT).unwrap();
    let (sum_after, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(ok && sum_after == sum, "{what}: memory intact");
    assert!(
        bytes.len() > 1 << 20,
        "{what}: the capture saw the migration"
    );
    count_markers(&bytes, &memory_markers(MIB, 64))
}

/// The TLS run shows no marker; the plaintext run of the same strategy
/// shows them, through the same capture and search.
fn memory_stays_hidden(strategy: Strategy) {
    let pki = Pki::new().unwrap();
    let (a, b) = (tls(&pki.a), tls(&pki.b));
    let in_tls = migrate_captured(strategy, [&a, &b]);
    assert_eq!(in_tls, 0, "{strategy}: memory seen on the link despite TLS");
    let in_plain = migrate_captured(strategy, [&Link::Plain, &Link::Plain]);
    assert!(
        in_plain > 0,
        "{strategy}: the plaintext control run shows no memory: the capture check cannot fail"
    );
}

#[test]
fn stop_and_copy_over_tls_keeps_memory_off_the_wire() {
    memory_stays_hidden(Strategy::StopAndCopy);
}

#[test]
fn page_server_over_tls_keeps_memory_off_the_wire() {
    memory_stays_hidden(Strategy::PageServer);
}

#[test]
fn lazy_over_tls_keeps_memory_off_the_wire() {
    memory_stays_hidden(Strategy::Lazy);
}

/// A receiver on loopback with `link`, accepting one connection; returns
/// its address and the accept's result.
fn one_receiver(
    link: Link,
) -> (
    SocketAddr,
    std::thread::JoinHandle<criu::Result<SocketAddr>>,
) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let h = std::thread::spawn(move || accept_peer(&link, &listener).map(|(_, peer)| peer));
    (addr, h)
}

/// A source workload, running (it is never touched when refused).
fn source_workload(dir: &Path) -> Workload {
    let w = Workload::spawn_in_pid_ns(
        BIN.as_ref(),
        &dir.join("out.log"),
        Duration::from_millis(1),
        1,
    )
    .unwrap();
    w.wait_for_seq(10, WAIT).unwrap();
    w
}

/// `source` sends a workload to a receiver with `dest`: both refuse or
/// are refused with the expected kinds of TLS error, and the workload
/// runs on, never stopped (its counter has no gap of a dump).
fn refused(source: Link, dest: Link, src_kind: TlsKind, dst_kind: TlsKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = source_workload(dir.path());
    let (addr, receiver) = one_receiver(dest);
    let work = dir.path().join("src");
    std::fs::create_dir_all(&work).unwrap();
    let sent = send_to(
        &source,
        addr,
        w.pid(),
        SourceConfig::new(Strategy::StopAndCopy).work_dir(&work),
    );
    let accepted = receiver.join().unwrap();
    let src_err = sent.expect_err("the source fails");
    let dst_err = accepted.expect_err("the receiver refuses");
    assert_eq!(src_err.tls_kind(), Some(src_kind), "source: {src_err}");
    assert_eq!(dst_err.tls_kind(), Some(dst_kind), "receiver: {dst_err}");
    assert!(w.advances(WAIT), "the source runs on");
    assert!(
        !work.join("images").exists(),
        "nothing was dumped: the source was never touched"
    );
    w.reap(Duration::ZERO).ok();
}

#[test]
fn a_source_with_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new().unwrap();
    let other = Ca::new(pki.dir.path(), "other").unwrap();
    // It trusts the right CA (so it accepts the receiver), but its own
    // certificate comes from another.
    let intruder = trusting(&other.host("intruder", Validity::Current).unwrap(), &pki.ca);
    refused(
        tls(&intruder),
        tls(&pki.b),
        TlsKind::RefusedByPeer,
        TlsKind::Untrusted,
    );
}

#[test]
fn a_receiver_with_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new().unwrap();
    let other = Ca::new(pki.dir.path(), "other").unwrap();
    let impostor = trusting(&other.host("impostor", Validity::Current).unwrap(), &pki.ca);
    refused(
        tls(&pki.a),
        tls(&impostor),
        TlsKind::Untrusted,
        TlsKind::RefusedByPeer,
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let pki = Pki::new().unwrap();
    let expired = pki.ca.host("expired", Validity::Expired).unwrap();
    refused(
        tls(&expired),
        tls(&pki.b),
        TlsKind::RefusedByPeer,
        TlsKind::Expired,
    );
}

#[test]
fn a_plain_tcp_sender_is_refused_and_resumes() {
    let pki = Pki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut w = source_workload(dir.path());
    let (addr, receiver) = one_receiver(tls(&pki.b));
    let work = dir.path().join("src");
    std::fs::create_dir_all(&work).unwrap();
    // Stop-and-copy writes its hello and dumps without waiting for an
    // answer: the refusal reaches it while it sends (or, if the reset came
    // first, before it dumps); either way it resumes the workload.
    let sent = send_to(
        &Link::Plain,
        addr,
        w.pid(),
        SourceConfig::new(Strategy::StopAndCopy).work_dir(&work),
    );
    let dst_err = receiver.join().unwrap().expect_err("refused");
    assert_eq!(
        dst_err.tls_kind(),
        Some(TlsKind::NotTls),
        "receiver: {dst_err}"
    );
    let src_err = sent.expect_err("the plain sender fails").to_string();
    assert!(w.advances(WAIT), "the source runs on after: {src_err}");
    w.reap(Duration::ZERO).ok();
}

/// A peer that connects and then says nothing, or trickles a byte at a
/// time, is dropped at the handshake deadline: the receive side's limits
/// hold before authentication.
#[test]
fn a_silent_or_trickling_peer_times_out_in_the_handshake() {
    let pki = Pki::new().unwrap();
    let config = TlsConfig::new(pki.b.clone())
        .unwrap()
        .handshake_timeout(Duration::from_millis(800));
    for trickle in [false, true] {
        let (addr, receiver) = one_receiver(Link::Tls(Box::new(config.clone())));
        let mut peer = TcpStream::connect(addr).unwrap();
        let feeder = std::thread::spawn(move || {
            // A TLS record header that announces a long handshake message,
            // then one byte every 200 ms: every single read succeeds.
            if trickle {
                let _ = peer.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]);
                while peer.write_all(&[0x01]).is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            } else {
                let mut sink = [0u8; 1];
                let _ = std::io::Read::read(&mut peer, &mut sink);
            }
        });
        let e = receiver.join().unwrap().expect_err("timed out");
        assert_eq!(
            e.tls_kind(),
            Some(TlsKind::TimedOut),
            "trickle {trickle}: {e}"
        );
        feeder.join().unwrap();
    }
}

#[test]
fn unusable_pem_files_are_named_in_the_error() {
    let pki = Pki::new().unwrap();
    let bad = TlsFiles::new(pki.a.ca(), pki.a.key(), pki.a.key());
    let e = TlsConfig::new(bad).expect_err("a key is no certificate");
    assert_eq!(e.tls_kind(), Some(TlsKind::Config), "{e}");
    let named = |e: &criu::Error, p: &Path| e.to_string().contains(&p.display().to_string());
    assert!(named(&e, pki.a.key()), "the file is named: {e}");
    let mismatched = TlsFiles::new(pki.a.ca(), pki.a.cert(), pki.b.key());
    let e = TlsConfig::new(mismatched).expect_err("wrong key");
    assert_eq!(e.tls_kind(), Some(TlsKind::Config), "{e}");
    assert!(named(&e, pki.b.key()), "the file is named: {e}");
}

/// A link of `files` that requires its peer's certificate to name `host`.
fn expecting(files: &TlsFiles, host: &str) -> Link {
    let config = TlsConfig::new(files.clone()).unwrap();
    Link::Tls(Box::new(config.peer_name(host).unwrap()))
}

#[test]
fn an_end_that_expects_its_peer_by_name_refuses_another_holder_of_the_ca() {
    let pki = Pki::new().unwrap();
    // The names match: both ends accept.
    let (addr, receiver) = one_receiver(expecting(&pki.b, "host-a"));
    let stream = expecting(&pki.a, "host-b").connect(addr, WAIT);
    assert!(stream.is_ok(), "{:?}", stream.err());
    assert!(receiver.join().unwrap().is_ok());
    // The destination expects host-c: host-a's certificate is refused
    // before the confirmation, so the source never starts.
    refused(
        tls(&pki.a),
        expecting(&pki.b, "host-c"),
        TlsKind::HungUp,
        TlsKind::WrongName,
    );
    // The source expects host-c: host-b is refused, and nothing is sent.
    let dir = tempfile::tempdir().unwrap();
    let mut w = source_workload(dir.path());
    let (addr, receiver) = one_receiver(tls(&pki.b));
    let sent = send_to(
        &expecting(&pki.a, "host-c"),
        addr,
        w.pid(),
        SourceConfig::new(Strategy::StopAndCopy),
    );
    let e = sent.expect_err("the source refuses the destination");
    assert_eq!(e.tls_kind(), Some(TlsKind::WrongName), "{e}");
    let _ = receiver.join().unwrap();
    assert!(w.advances(WAIT), "the source runs on");
    w.reap(Duration::ZERO).ok();
}

/// The local TCP ports on `ip` in state `st` (`0A` listening, `01`
/// established) in the network namespace of thread `tid` of this process.
fn ports_on(tid: i32, ip: Ipv4Addr, st: &str) -> Vec<u16> {
    let want = format!("{:08X}", u32::from_ne_bytes(ip.octets()));
    let table = std::fs::read_to_string(format!("/proc/{tid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            (addr == want && f.get(3) == Some(&st)).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// The TCP ports listening on `ip` in the network namespace of thread
/// `tid` of this process.
fn listening_on(tid: i32, ip: Ipv4Addr) -> Vec<u16> {
    ports_on(tid, ip, "0A")
}

#[test]
fn the_page_server_relay_takes_only_the_streams_source() {
    // Another holder of the CA's certificates, on the source's host,
    // connects to the destination's page-server relay before the source
    // does and sends a wrong token. Before: the relay took the first
    // certificate holder, and the migration failed.
    let pki = Pki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let mut w = spawn_on_a(&hosts, &dir.path().join("out.log"));
    let sum = w.memory_checksum().unwrap();
    w.wait_for_seq(20, WAIT).unwrap();
    let (src_dir, dst_dir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::create_dir_all(&dst_dir).unwrap();
    let (a, b) = (tls(&pki.a), tls(&pki.b));
    let intruder_files = pki.a.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    // The destination's page server starts a second late: its relay's
    // listener is there for that second before the source learns of it,
    // and the intruder surely comes first.
    let late_criu = dir.path().join("late-criu");
    std::fs::write(&late_criu, "#!/bin/sh\nsleep 1\nexec criu \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &late_criu,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut daemons = criu::DaemonConfig::new();
    daemons.binary(&late_criu);
    let (run, intruded) = std::thread::scope(|s| {
        // A thread parked in host b, whose socket table the intruder reads.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done, hosts, intruder_files) = (&done, &hosts, &intruder_files);
        s.spawn(move || {
            hosts.b.run(|| {
                // SAFETY: gettid cannot fail and touches no memory.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        });
        let tid = tid_rx.recv().unwrap();
        let intruder = s.spawn(move || {
            hosts
                .a
                .run(|| {
                    // The relay's listener: once the migration's stream
                    // is up (a connection established on host b's
                    // address), a listener there with no connection yet.
                    // (The migration's own listener has the stream; the
                    // source reaches the relay a second later.) Not by
                    // order of appearance: a thread that starts polling
                    // late sees both listeners at once.
                    let deadline = std::time::Instant::now() + WAIT;
                    let mut ports = Vec::new();
                    while ports.is_empty() && std::time::Instant::now() < deadline {
                        let busy = ports_on(tid, hosts.b.addr, "01");
                        if !busy.is_empty() {
                            ports = listening_on(tid, hosts.b.addr)
                                .into_iter()
                                .filter(|p| !busy.contains(p))
                                .collect();
                        }
                    }
                    let mut held = Vec::new();
                    for p in ports {
                        let Ok(tcp) = TcpStream::connect((hosts.b.addr, p)) else {
                            continue;
                        };
                        let cfg = TlsConfig::new(intruder_files.clone()).unwrap();
                        if let Ok(mut t) = cfg.connect(tcp) {
                            let _ = t.write_all(&[b'a'; 64]).and_then(|()| t.flush());
                            held.push(t);
                        }
                    }
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    held.len()
                })
                .unwrap()
        });
        let run = hosts
            .migrate_over(
                [&a, &b],
                w.pid(),
                || SourceConfig::new(Strategy::PageServer).work_dir(&src_dir),
                || DestConfig::new().work_dir(&dst_dir).daemons(daemons),
                None,
            )
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (run, intruder.join().unwrap())
    });
    assert!(intruded > 0, "the intruder got in before the source");
    let src = run.src.unwrap_or_else(|e| panic!("source: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("destination: {e}"));
    w.reap(WAIT).unwrap();
    let pid = dst.child.pid();
    assert_eq!(src.restored_pid, pid);
    let (after, ok) = w.verify_memory(pid, WAIT).unwrap();
    assert!(ok && after == sum, "memory intact");
}
