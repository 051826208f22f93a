//! What a TLS migration puts on the wire, seen in a tcpdump capture of
//! host a's link: every TCP connection between the hosts (the migration's
//! stream and CRIU's own: page server, lazy pages) opens with a TLS
//! ClientHello, and a name that lives in `files.img` (a file the workload
//! holds open, whose name is nowhere in its memory) never shows in clear.
//! The plaintext run of the same strategy is the control: no connection
//! of it opens with a ClientHello, and the name shows. And the
//! page-server relay's port refuses a TLS 1.2 client and a stranger's
//! certificate. Real CRIU, two network-namespace hosts; needs root,
//! tcpdump and openssl.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criu::migrate::{DestConfig, SourceConfig, Strategy};
use criu::tls::{TlsConfig, TlsFiles};
use criu_testkit::capture::{self, Capture};
use criu_testkit::certs::{trusting, Ca, Pki, Validity};
use criu_testkit::hosts::{Host, RelayFn, TwoHosts};
use criu_testkit::link::Link;
use criu_testkit::{aftermath, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

fn tls(files: &TlsFiles) -> Link {
    Link::Tls(Box::new(TlsConfig::new(files.clone()).unwrap()))
}

/// The workload on host a, in its own PID namespace, writing to `out`,
/// with `marker` (a file in its directory) open as descriptor 7: opened by
/// the shell that then `exec`s the workload, so the name is in no memory of
/// the workload's, only in the kernel's file table (and so in `files.img`).
fn workload_holding(hosts: &TwoHosts, out: &Path, marker: &Path) -> Workload {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--", "setsid", "sh", "-c"])
        .arg(r#"exec 7>"$0"; exec "$@""#)
        .arg(marker)
        .arg(BIN)
        .arg(out)
        .args(["--interval-us", "1000", "--memory-mib", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hosts
        .a
        .run(|| Workload::start_wrapped(cmd, out, 4))
        .unwrap()
        .unwrap()
}

/// A file name no other bytes on the link will hold by chance.
fn marker_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("files-img-marker-{}-{nanos}", std::process::id())
}

/// A capture of one migration from a to b over `links`.
struct Captured {
    flows: Vec<capture::Flow>,
    marker_seen: bool,
}

/// Migrates a fresh workload holding a marker file open, over `links`,
/// capturing host a's link; checks that the migration succeeded and the
/// marker crossed in `files.img`.
fn migrate_captured(strategy: Strategy, links: [&Link; 2]) -> Captured {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let marker = dir.path().join(marker_name());
    let mut w = workload_holding(&hosts, &dir.path().join("out.log"), &marker);
    w.wait_for_seq(20, WAIT).unwrap();
    let (src_dir, dst_dir) = criu_testkit::fixture::migration_dirs(dir.path());
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
    run.src.unwrap_or_else(|e| panic!("{what}: {e}"));
    let dst = run.dst.unwrap_or_else(|e| panic!("{what}: {e}"));
    w.reap(WAIT).unwrap();
    assert_eq!(dropped, 0, "{what}: tcpdump dropped packets");
    let name = marker.file_name().unwrap().to_string_lossy().into_owned();
    let files_img = std::fs::read(dst_dir.join("images/files.img")).unwrap();
    assert!(
        capture::contains(&files_img, name.as_bytes()),
        "{what}: the marker is in files.img"
    );
    drop(dst);
    Captured {
        flows: capture::tcp_flows(&bytes).unwrap(),
        marker_seen: capture::contains(&bytes, name.as_bytes()),
    }
}

/// Over TLS every connection opens with a ClientHello and the marker
/// never shows; in clear none does and the marker shows.
fn the_wire_of(strategy: Strategy, connections: usize) {
    let pki = Pki::new().unwrap();
    let (a, b) = (tls(&pki.a), tls(&pki.b));
    let secure = migrate_captured(strategy, [&a, &b]);
    eprintln!("{strategy} over TLS: {:?}", secure.flows);
    assert!(
        secure.flows.len() >= connections,
        "{strategy}: the stream and CRIU's own connections were captured: {:?}",
        secure.flows
    );
    for f in &secure.flows {
        assert!(
            f.opens_with_client_hello(),
            "{strategy}: a connection of a TLS migration opened in clear: {f:?}"
        );
    }
    assert!(
        !secure.marker_seen,
        "{strategy}: files.img crossed in clear"
    );
    let plain = migrate_captured(strategy, [&Link::Plain, &Link::Plain]);
    assert!(plain.flows.len() >= connections, "{:?}", plain.flows);
    assert!(
        plain.flows.iter().all(|f| !f.opens_with_client_hello()),
        "{strategy}: the control's connections are plain: {:?}",
        plain.flows
    );
    assert!(
        plain.marker_seen,
        "{strategy}: the control shows the marker, so the check can fail"
    );
}

#[test]
fn stop_and_copy_over_tls_opens_every_connection_with_tls_and_hides_files_img() {
    the_wire_of(Strategy::StopAndCopy, 1);
}

#[test]
fn page_server_over_tls_opens_every_connection_with_tls_and_hides_files_img() {
    // The stream and the page-server relay's connection.
    the_wire_of(Strategy::PageServer, 2);
}

#[test]
fn lazy_over_tls_opens_every_connection_with_tls_and_hides_files_img() {
    // The stream and the lazy pages' connection (a side channel of the
    // TlsStream: the crate's relay, no longer CRIU's --tls).
    the_wire_of(Strategy::Lazy, 2);
}

#[test]
fn pre_copy_over_tls_opens_every_connection_with_tls_and_hides_files_img() {
    the_wire_of(Strategy::PreCopy, 1);
}

/// The listening TCP sockets of the calling thread's network namespace.
fn listening() -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"0A"))
                .then(|| u16::from_str_radix(f.get(1)?.split(':').nth(1)?, 16).ok())
                .flatten()
        })
        .collect()
}

/// A relay on host b between the source and the receiver which, when a
/// new listening port appears on host b while the destination talks (the
/// destination's page-server relay, whose port it is about to send),
/// runs `probe` against it before passing the destination's bytes on.
fn probing_new_listeners(probe: impl FnOnce(u16) + Send + 'static) -> RelayFn {
    Box::new(move |from_src, to_dst| {
        use std::io::{Read, Write};
        let known = listening();
        let (mut s, mut d) = (from_src.try_clone().unwrap(), to_dst.try_clone().unwrap());
        let fwd = std::thread::spawn(move || {
            let _ = std::io::copy(&mut s, &mut d);
            let _ = d.shutdown(std::net::Shutdown::Write);
        });
        let (mut back_from, mut back_to) = (to_dst, from_src);
        let mut probe = Some(probe);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match back_from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if probe.is_some() {
                if let Some(port) = listening().into_iter().find(|p| !known.contains(p)) {
                    (probe.take().unwrap())(port);
                }
            }
            if back_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = back_to.shutdown(std::net::Shutdown::Write);
        let _ = fwd.join();
    })
}

/// `openssl s_client` from `host` to `addr`, TLS 1.2 only, with a valid
/// certificate: its exit status and output.
fn tls12_client(host: &Host, addr: SocketAddrV4, files: &TlsFiles) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", host.netns_path().display()))
        .args(["openssl", "s_client", "-tls1_2", "-connect"])
        .arg(addr.to_string())
        .arg("-cert")
        .arg(files.cert())
        .arg("-key")
        .arg(files.key())
        .arg("-CAfile")
        .arg(files.ca())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A page-server migration over TLS whose destination relay port is
/// first reached by `probe` (from host a): the destination must refuse it
/// and wait on for the source, whose relay presents the one-time token
/// sent over the stream: the migration completes, and nothing is left.
fn relay_port_refuses(probe: impl FnOnce(&Host, SocketAddrV4, &Pki) + Send + 'static) {
    aftermath::isolated(|| {
        let pki = std::sync::Arc::new(Pki::new().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let hosts = TwoHosts::new().unwrap();
        let out = dir.path().join("out.log");
        let mut w = criu_testkit::fixture::counter_on(&hosts.a, &out, 4);
        w.wait_for_seq(20, WAIT).unwrap();
        let a = Host {
            name: hosts.a.name.clone(),
            addr: hosts.a.addr,
        };
        let b_addr = hosts.b.addr;
        let probed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = probed.clone();
        let keys = pki.clone();
        let relay = probing_new_listeners(move |port| {
            probe(&a, SocketAddrV4::new(b_addr, port), &keys);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let run = hosts
            .migrate_over_through(
                [&tls(&pki.a), &tls(&pki.b)],
                w.pid(),
                || SourceConfig::new(Strategy::PageServer),
                DestConfig::new,
                Some(relay),
            )
            .unwrap();
        assert!(
            probed.load(std::sync::atomic::Ordering::SeqCst),
            "the relay port was probed"
        );
        let dst = run
            .dst
            .expect("the destination refused the prober and took the source");
        let src = run.src.expect("the migration completes");
        assert_eq!(src.restored_pid, dst.child.pid());
        w.reap(WAIT).unwrap();
        drop(dst);
        drop(w);
        assert_eq!(aftermath::shm_entries(), Vec::<PathBuf>::new());
        assert_eq!(aftermath::no_own_processes(dir.path(), WAIT), Ok(()));
    });
}

#[test]
fn the_page_server_relay_refuses_a_tls12_client() {
    relay_port_refuses(|a, addr, pki| {
        let (ok, text) = tls12_client(a, addr, &pki.a);
        eprintln!("openssl s_client -tls1_2: {ok}: {text}");
        assert!(!ok, "a TLS 1.2 handshake failed: {text}");
        assert!(
            text.contains("alert protocol version"),
            "refused for its version: {text}"
        );
    });
}

#[test]
fn the_page_server_relay_refuses_a_stranger() {
    relay_port_refuses(|a, addr, pki| {
        let other = Ca::new(pki.dir.path(), "other").unwrap();
        // Trusts the right CA, but its own certificate is another CA's.
        let stranger = trusting(&other.host("stranger", Validity::Current).unwrap(), &pki.ca);
        let tcp = a
            .run(|| std::net::TcpStream::connect(addr))
            .unwrap()
            .unwrap();
        // TLS 1.3: the server judges the client's certificate after its
        // own Finished; the refusal arrives as an alert on the first read.
        let config = TlsConfig::new(stranger).unwrap();
        match config.connect(tcp) {
            Err(e) => eprintln!("the stranger's handshake failed: {e}"),
            Ok(mut s) => {
                use std::io::Read;
                let mut buf = [0u8; 1];
                let r = s.read(&mut buf);
                eprintln!("the stranger's first read: {r:?}");
                assert!(!matches!(r, Ok(1)), "the stranger got data");
            }
        }
    });
}
