//! A packet capture of one host's link (tcpdump, inside the host's network
//! namespace), and a search of it for the workload's memory: the proof
//! that memory does or does not cross the link in clear.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::hosts::Host;
use crate::memory_pattern;

/// A running tcpdump on a host's `eth0`, writing every TCP packet whole to
/// a file. Stopped by [`Capture::stop`]; killed and reaped on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts capturing on `host`'s link into `file` (its log next to it),
    /// and returns once tcpdump listens.
    pub fn start(host: &Host, file: &Path) -> io::Result<Capture> {
        let log = file.with_extension("log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.netns_path().display()))
            .args([
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-B",
                "65536",
                "-w",
            ])
            .arg(file)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting tcpdump (install it: scripts/setup.sh): {e}"),
            )
        })?;
        let mut c = Capture {
            child: Some(child),
            file: file.to_path_buf(),
            log,
        };
        c.wait_listening(Duration::from_secs(10))?;
        Ok(c)
    }

    fn wait_listening(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "tcpdump exited ({status}): {text}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("tcpdump not listening: {text}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops tcpdump (SIGINT, so that it writes out what it holds) and
    /// returns the capture's bytes and the packets the kernel dropped.
    pub fn stop(mut self) -> io::Result<(Vec<u8>, u64)> {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGINT);
            c.wait()?;
        }
        let log = std::fs::read_to_string(&self.log)?;
        let dropped = log
            .lines()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no drop count in tcpdump's output: {log}")))?;
        Ok((std::fs::read(&self.file)?, dropped))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Markers from the workload's memory pattern (`mib` MiB): `count` pairs
/// of consecutive words spread over the buffer, 16 bytes each, as they lie
/// in memory (little-endian).
pub fn memory_markers(mib: usize, count: usize) -> Vec<[u8; 16]> {
    let words = mib * 1024 * 1024 / 8;
    (0..count)
        .map(|j| {
            let i = j * (words / count) + 1;
            let mut m = [0u8; 16];
            m[..8].copy_from_slice(&memory_pattern(i).to_le_bytes());
            m[8..].copy_from_slice(&memory_pattern(i + 1).to_le_bytes());
            m
        })
        .collect()
}

/// How many of `markers` occur in `bytes`.
pub fn count_markers(bytes: &[u8], markers: &[[u8; 16]]) -> usize {
    let by_head: HashMap<[u8; 8], Vec<usize>> =
        markers
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut m, (i, mk)| {
                m.entry(mk[..8].try_into().expect("8 bytes"))
                    .or_default()
                    .push(i);
                m
            });
    let mut first = [false; 256];
    for mk in markers {
        first[mk[0] as usize] = true;
    }
    let mut found = vec![false; markers.len()];
    for (p, w) in bytes.windows(16).enumerate() {
        if !first[w[0] as usize] {
            continue;
        }
        if let Some(ids) = by_head.get(&bytes[p..p + 8]) {
            for &i in ids {
                found[i] |= w == markers[i];
            }
        }
    }
    found.iter().filter(|f| **f).count()
}

/// One TCP connection seen in a capture: who opened it, and the first
/// bytes of data each side sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The end that sent the SYN.
    pub client: std::net::SocketAddrV4,
    /// The end that answered it.
    pub server: std::net::SocketAddrV4,
    /// The first segment of data from the client (empty if none).
    pub client_first: Vec<u8>,
    /// The first segment of data from the server (empty if none).
    pub server_first: Vec<u8>,
}

impl Flow {
    /// Whether the client's first data is a TLS handshake record holding a
    /// ClientHello (record type 22, version 3.x, handshake type 1).
    pub fn opens_with_client_hello(&self) -> bool {
        let d = &self.client_first;
        d.len() >= 6 && d[0] == 0x16 && d[1] == 0x03 && d[5] == 0x01
    }
}

/// Reads the whole, not-truncated pcap file `bytes` (as tcpdump `-w`
/// writes it: microsecond or nanosecond timestamps, Ethernet frames) and
/// returns its IPv4 TCP connections that begin in it (with their SYN).
pub fn tcp_flows(bytes: &[u8]) -> io::Result<Vec<Flow>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("pcap: {what}"));
    let magic = bytes.get(..4).ok_or_else(|| bad("no header"))?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(bad("not a pcap file")),
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        })
    };
    if u32_at(bytes, 20) != Some(1) {
        return Err(bad("not an Ethernet capture"));
    }
    let mut flows: Vec<Flow> = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_at(bytes, at + 8).ok_or_else(|| bad("record header"))? as usize;
        let frame = bytes
            .get(at + 16..at + 16 + len)
            .ok_or_else(|| bad("truncated record"))?;
        at += 16 + len;
        if let Some(seg) = tcp_segment(frame) {
            seg.add_to(&mut flows);
        }
    }
    Ok(flows)
}

/// One TCP segment of a frame.
struct Segment<'a> {
    from: std::net::SocketAddrV4,
    to: std::net::SocketAddrV4,
    syn_only: bool,
    data: &'a [u8],
}

impl Segment<'_> {
    fn add_to(&self, flows: &mut Vec<Flow>) {
        if self.syn_only {
            if !flows
                .iter()
                .any(|f| f.client == self.from && f.server == self.to)
            {
                flows.push(Flow {
                    client: self.from,
                    server: self.to,
                    client_first: Vec::new(),
                    server_first: Vec::new(),
                });
            }
            return;
        }
        if self.data.is_empty() {
            return;
        }
        for f in flows.iter_mut() {
            if f.client == self.from && f.server == self.to && f.client_first.is_empty() {
                f.client_first = self.data.to_vec();
            } else if f.client == self.to && f.server == self.from && f.server_first.is_empty() {
                f.server_first = self.data.to_vec();
            }
        }
    }
}

/// The TCP segment in an Ethernet frame carrying IPv4, if it is one.
fn tcp_segment(frame: &[u8]) -> Option<Segment<'_>> {
    use std::net::{Ipv4Addr, SocketAddrV4};
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(9)? != &6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let o: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
    };
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(Segment {
        from: SocketAddrV4::new(addr(12)?, port(0)?),
        to: SocketAddrV4::new(addr(16)?, port(2)?),
        syn_only: flags & 0x12 == 0x02,
        data: tcp.get(offset..)?,
    })
}

/// Whether `needle` occurs in `bytes`.
pub fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_where_they_are_and_only_there() {
        let markers = memory_markers(1, 8);
        let mut bytes = vec![0u8; 4096];
        bytes[100..116].copy_from_slice(&markers[3]);
        bytes[4000..4016].copy_from_slice(&markers[7]);
        assert_eq!(count_markers(&bytes, &markers), 2);
        bytes[4001] ^= 1;
        assert_eq!(count_markers(&bytes, &markers), 1);
        assert_eq!(count_markers(&[], &markers), 0);
    }
}
