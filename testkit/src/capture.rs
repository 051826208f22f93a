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
