//! Faults to inject into a migration between two hosts, and the probe of
//! the held source: relays that cut the stream or lose its end, CRIU's
//! own daemons found on a host and killed, their connections cut.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::hosts::RelayFn;
use crate::read_ticks;

/// How long the probe watches a held source's counter (the workload
/// counts every millisecond: a running one writes dozens of values).
const WATCH: Duration = Duration::from_millis(50);

/// What [`HeldProbe::sample`] saw of the source while it was meant to be
/// held: its state letter, and its counter at the start and the end of a
/// short watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldSample {
    /// `/proc/PID/stat`'s state (`T` stopped, `t` traced and stopped).
    pub state: Option<char>,
    /// The counter when the watch began.
    pub seq: u64,
    /// The counter when it ended.
    pub seq_after: u64,
}

impl HeldSample {
    /// Alive and not counting. (Its state letter alone does not say:
    /// CRIU's parasite runs inside a seized task, and a task CRIU lets go
    /// shows `R` until its pending `SIGSTOP` stops it again.)
    pub fn held(&self) -> bool {
        matches!(self.state, Some(s) if s != 'Z' && s != 'X') && self.seq == self.seq_after
    }
}

/// Samples the source while the migration should hold it: one sample, the
/// first time [`HeldProbe::sample`] is called (from a relay, a
/// notification, a restore's options).
#[derive(Debug, Clone)]
pub struct HeldProbe {
    pid: i32,
    out: std::path::PathBuf,
    seen: Arc<Mutex<Option<HeldSample>>>,
}

impl HeldProbe {
    /// A probe of the workload `pid` counting into `out`.
    pub fn new(pid: i32, out: &Path) -> HeldProbe {
        HeldProbe {
            pid,
            out: out.to_path_buf(),
            seen: Arc::default(),
        }
    }

    /// Records the source's state and counter now and after a short
    /// watch; only the first call records.
    pub fn sample(&self) {
        let last = || read_ticks(&self.out).last().map_or(0, |t| t.seq);
        let state = crate::task_state(self.pid);
        let seq = last();
        std::thread::sleep(WATCH);
        let sample = HeldSample {
            state,
            seq,
            seq_after: last(),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_or_insert(sample);
    }

    /// The recorded sample, if any.
    pub fn seen(&self) -> Option<HeldSample> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Copies `from` to `to` on a thread until either ends.
fn pump(mut from: TcpStream, mut to: TcpStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    })
}

/// A relay that passes everything until `armed` is set (by a hook of the
/// source's dump: its query-ext-files notification comes once the tree is
/// stopped and seized, and never from pre-copy's passes), then `after`
/// more bytes from the source; then it samples the held source with
/// `probe` and cuts both directions: the stream cut during the transfer,
/// while the source is held.
pub fn cut_after(armed: Arc<AtomicBool>, probe: HeldProbe, after: usize) -> RelayFn {
    Box::new(move |mut from: TcpStream, mut to: TcpStream| {
        let back = pump(to.try_clone().unwrap(), from.try_clone().unwrap());
        let mut buf = vec![0u8; 64 << 10];
        let mut passed = 0usize;
        loop {
            let counted = armed.load(Ordering::SeqCst);
            let len = buf.len();
            let room = if counted { after - passed } else { len };
            let n = match from.read(&mut buf[..room.min(len)]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Armed meanwhile (the read waited while the source dumped):
            // this chunk counts too.
            let n = match counted || armed.load(Ordering::SeqCst) {
                true => n.min(after - passed),
                false => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if counted || armed.load(Ordering::SeqCst) {
                passed += n;
                if passed >= after {
                    probe.sample();
                    break;
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        let _ = back.join();
    })
}

/// A hook of [`on_messages`].
pub type Hook = Box<dyn FnOnce() + Send>;

/// The destination's `Restored` message, as it starts on the wire (a
/// message frame: `M`, a length, JSON).
const RESTORED: &[u8] = b"{\"Restored\"";
/// The source's `Done` message, whole.
const DONE: &[u8] = b"M\x06\x00\x00\x00\"Done\"";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A relay that passes everything both ways, and runs `on_restored` when
/// the destination's `Restored` message passes (the tree restored and
/// continued there; before the source hears of it), and `on_done` when
/// the source's `Done` passes after it (the source is about to kill its
/// copy; before the destination hears of it).
pub fn on_messages(on_restored: Option<Hook>, on_done: Option<Hook>) -> RelayFn {
    Box::new(move |from_src: TcpStream, mut to_dst: TcpStream| {
        let restored = Arc::new(AtomicBool::new(false));
        let seen = restored.clone();
        let (mut src, mut dst) = (from_src.try_clone().unwrap(), to_dst.try_clone().unwrap());
        let forward = std::thread::spawn(move || {
            let mut on_done = on_done;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if seen.load(Ordering::SeqCst) && contains(&buf[..n], DONE) {
                    if let Some(hook) = on_done.take() {
                        hook();
                    }
                }
                if dst.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = dst.shutdown(Shutdown::Write);
        });
        let mut back_to = from_src;
        let mut on_restored = on_restored;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match to_dst.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if contains(&buf[..n], RESTORED) {
                if let Some(hook) = on_restored.take() {
                    hook();
                }
                restored.store(true, Ordering::SeqCst);
            }
            if back_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = back_to.shutdown(Shutdown::Write);
        let _ = forward.join();
    })
}

/// A relay that passes both ways until the destination's `Restored`
/// message passes, then lets nothing more reach the destination (the
/// source's `Done` is lost, and so is any answer to it).
pub fn lose_the_end() -> RelayFn {
    Box::new(|from_src: TcpStream, mut to_dst: TcpStream| {
        let fwd = pump(from_src.try_clone().unwrap(), to_dst.try_clone().unwrap());
        let mut back_to = from_src;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match to_dst.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buf[..n].windows(8).any(|w| w == b"Restored") {
                let _ = to_dst.shutdown(Shutdown::Write);
            }
            if back_to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = back_to.shutdown(Shutdown::Both);
        let _ = fwd.join();
    })
}

/// A process of CRIU's that this test started (see
/// [`crate::aftermath::started_here`]) in the network namespace of inode
/// `netns` (a host's, [`crate::hosts::Host::netns_inode`]) whose command line holds
/// `word` (`page-server`, `lazy-pages`).
pub fn criu_daemon(netns: u64, word: &str) -> Option<i32> {
    crate::aftermath::started_here()
        .into_iter()
        .filter(|p| p.cmdline.contains("criu") && p.cmdline.contains(word))
        .map(|p| p.pid)
        .find(|&pid| crate::hosts::netns_of(pid).is_ok_and(|n| n == netns))
}

/// One TCP connection of a process, from `/proc/PID/net/tcp` (the
/// process's network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConn {
    /// The local port.
    pub local_port: u16,
    /// The remote address.
    pub remote: std::net::SocketAddrV4,
    /// Bytes received and not yet read by the process.
    pub rx_queue: u64,
}

/// The established IPv4 TCP connections whose sockets `pid` holds.
pub fn tcp_connections(pid: i32) -> Vec<TcpConn> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" || !inodes.iter().any(|i| i == f[9]) {
                return None;
            }
            let local_port = u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok()?;
            let (ip, port) = f[2].split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let remote = std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::from(ip.swap_bytes()),
                u16::from_str_radix(port, 16).ok()?,
            );
            let rx_queue = u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()?;
            Some(TcpConn {
                local_port,
                remote,
                rx_queue,
            })
        })
        .collect()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

/// Cuts the TCP connection from `local_port` to `remote` in the network
/// namespace at `netns` (a host's [`crate::hosts::Host::netns_path`]) with `ss -K` (the
/// kernel aborts it: both ends see a reset).
pub fn cut_connection(
    netns: &Path,
    local_port: u16,
    remote: std::net::SocketAddrV4,
) -> std::io::Result<()> {
    let filter = format!(
        "sport = :{local_port} and dst {} and dport = :{}",
        remote.ip(),
        remote.port()
    );
    let netns = format!("--net={}", netns.display());
    let args = ["-n", "-t", "-K", &filter];
    let out = std::process::Command::new("nsenter")
        .arg(&netns)
        .arg("ss")
        .args(args)
        .output()?;
    crate::hosts::check_output("ss", &args, &out)
}

/// The paths of the files `pid` has open (its descriptors' links).
pub fn open_paths(pid: i32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}
