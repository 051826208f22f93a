//! What must hold after a migration fault, as checks that can fail: no
//! process of the test's own left (CRIU, its daemons, a restored copy),
//! none in either host's network namespace, nothing left in the work
//! directories or in the crate's in-memory directories, the workload's
//! counter without a value twice or a value lost, and the application
//! running exactly as many times as it should.
//!
//! The crate's default in-memory directories live in `/dev/shm`, which
//! every test on the machine shares. [`isolated`] runs a test body with a
//! `/dev/shm` of its own (a fresh tmpfs in a mount namespace of its own,
//! entered by the thread that runs the body; every thread and process it
//! starts inherits it), so "nothing left in /dev/shm" is exact there, and
//! every process started on the test's behalf, whatever became of its
//! parent, is found by its mount namespace.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hosts::Host;
use crate::Tick;

/// Where the crate keeps its in-memory directories.
pub const SHM: &str = "/dev/shm";

/// Runs `body` on a thread of its own in a mount namespace of its own
/// whose `/dev/shm` is a fresh, empty tmpfs (the host's mounts stay
/// visible, slave: nothing mounted here reaches the host). Panics of
/// `body` are re-raised. The namespace, and its tmpfs, go with the last
/// process in it.
pub fn isolated<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            enter_private_shm().expect("a mount namespace with a private /dev/shm");
            body()
        });
        match t.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Moves the calling thread into a new mount namespace and mounts a fresh
/// tmpfs on `/dev/shm` there.
fn enter_private_shm() -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    mount(
        Some("tmpfs"),
        SHM,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=512m"),
    )?;
    Ok(())
}

/// The inode of the calling thread's mount namespace.
fn own_mount_ns() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/mnt")?.ino())
}

/// The entries of `/dev/shm` as the calling thread sees it.
pub fn shm_entries() -> Vec<PathBuf> {
    std::fs::read_dir(SHM)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// One process, as a leftover check names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .to_string()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` descends from `ancestor` (following parents in /proc).
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        match ppid(p) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => p = parent,
            _ => return false,
        }
    }
    false
}

/// Live (not zombie) processes other than this one that belong to the
/// calling thread's test: the processes in the calling thread's mount
/// namespace when it has one of its own (see [`isolated`]), else the
/// descendants of this process; and processes whose command line or
/// working directory names `dir` (the test's own directory).
pub fn own_processes(dir: &Path) -> Vec<Proc> {
    related_processes(Some(dir))
}

/// [`own_processes`] without a directory: the processes the calling
/// thread's test started (its mount namespace's, or this process's
/// descendants).
pub fn started_here() -> Vec<Proc> {
    related_processes(None)
}

fn related_processes(dir: Option<&Path>) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let ours_ns = own_mount_ns().ok();
    let host_ns = std::fs::metadata(format!("/proc/{me}/ns/mnt"))
        .ok()
        .map(|m| m.ino());
    let private = ours_ns.filter(|ns| Some(*ns) != host_ns);
    let needle = dir.map(|d| d.to_string_lossy().into_owned());
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && crate::alive(pid))
        .filter(|&pid| {
            let in_ns = private.is_some_and(|ns| {
                std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == ns)
            });
            let names_dir = dir.is_some_and(|dir| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir))
                    || needle
                        .as_ref()
                        .is_some_and(|n| cmdline(pid).contains(n.as_str()))
            });
            // Outside a namespace of the test's own, its descendants
            // (under `cargo test`, other tests' too).
            let related = match private {
                Some(_) => in_ns,
                None => descends_from(pid, me),
            };
            related || names_dir
        })
        .map(|pid| Proc {
            pid,
            cmdline: cmdline(pid),
        })
        .collect()
}

/// Waits (up to `timeout`: a killed task may take a moment to be reaped)
/// until [`own_processes`] is empty; the processes still there otherwise.
pub fn no_own_processes(dir: &Path, timeout: Duration) -> Result<(), Vec<Proc>> {
    let mut left = Vec::new();
    let gone = crate::wait_until(timeout, || {
        left = own_processes(dir);
        left.is_empty()
    });
    if gone {
        Ok(())
    } else {
        Err(left)
    }
}

/// The pids of the processes in `host`'s network namespace
/// (`ip netns pids`).
pub fn netns_pids(host: &Host) -> io::Result<Vec<i32>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &host.name])
        .output()?;
    crate::hosts::check_output("ip", &["netns", "pids", &host.name], &out)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| crate::alive(p))
        .collect())
}

/// Waits (up to `timeout`) until no live process is left in `host`'s
/// network namespace; those still there otherwise.
pub fn empty_netns(host: &Host, timeout: Duration) -> Result<(), Vec<Proc>> {
    let mut left = Vec::new();
    let empty = crate::wait_until(timeout, || {
        left = netns_pids(host).unwrap_or_default();
        left.is_empty()
    });
    if empty {
        Ok(())
    } else {
        Err(left
            .into_iter()
            .map(|pid| Proc {
                pid,
                cmdline: cmdline(pid),
            })
            .collect())
    }
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat`'s
/// 22nd field): with the pid, what tells a process from a later one that
/// took its pid. `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process that had `pid` and started at `start` is still in
/// the process table, running, stopped or as a zombie nobody reaped.
pub fn still_there(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Live processes running `bin` whose command line names `out`: the
/// copies of the workload writing there (the source and any restored one).
pub fn copies(bin: &Path, out: &Path) -> Vec<i32> {
    let (bin, out) = (
        bin.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let c = cmdline(pid);
            c.starts_with(&bin) && c.contains(&out) && crate::alive(pid)
        })
        .collect()
}

/// Why a counter's values are not what a check wanted: the first place
/// where they go wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterError(pub String);

impl std::fmt::Display for CounterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The counter ran once: 1, 2, 3... with no value twice and none lost.
pub fn consecutive(ticks: &[Tick]) -> Result<(), CounterError> {
    match ticks
        .iter()
        .enumerate()
        .find(|(i, t)| t.seq != *i as u64 + 1)
    {
        None => Ok(()),
        Some((i, t)) => Err(CounterError(format!(
            "tick {i} is {} (expected {}): {}",
            t.seq,
            i + 1,
            around(ticks, i)
        ))),
    }
}

/// The counter ran once up to `stop` (1..=stop, each once), then as two
/// copies each counting on from `stop + 1`, interleaved in any way: none
/// lost, and no value more than twice. Returns how many values after
/// `stop` both copies wrote.
pub fn two_copies_from(ticks: &[Tick], stop: u64) -> Result<u64, CounterError> {
    let upto = ticks.iter().take_while(|t| t.seq <= stop).count();
    consecutive(&ticks[..upto])?;
    if upto as u64 != stop {
        return Err(CounterError(format!(
            "{upto} ticks before the stop at {stop}"
        )));
    }
    // Each copy's next value; a tick belongs to whichever copy expects it.
    let mut next = [stop + 1, stop + 1];
    for (i, t) in ticks.iter().enumerate().skip(upto) {
        let copy = next.iter().position(|&n| n == t.seq).ok_or_else(|| {
            CounterError(format!(
                "tick {i} is {}, but the copies expected {next:?}: {}",
                t.seq,
                around(ticks, i)
            ))
        })?;
        next[copy] += 1;
    }
    Ok(next[0].min(next[1]) - (stop + 1))
}

/// A few ticks around index `i`, for an error message.
fn around(ticks: &[Tick], i: usize) -> String {
    let from = i.saturating_sub(3);
    let seqs: Vec<u64> = ticks[from..(i + 3).min(ticks.len())]
        .iter()
        .map(|t| t.seq)
        .collect();
    format!("ticks {from}.. are {seqs:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(seqs: &[u64]) -> Vec<Tick> {
        seqs.iter()
            .map(|&seq| Tick {
                seq,
                unix_ns: seq as u128,
            })
            .collect()
    }

    #[test]
    fn consecutive_fails_on_a_repeat_a_gap_and_a_reset() {
        assert!(consecutive(&ticks(&[1, 2, 3, 4])).is_ok());
        assert!(consecutive(&ticks(&[1, 2, 2, 3])).is_err());
        assert!(consecutive(&ticks(&[1, 2, 4])).is_err());
        assert!(consecutive(&ticks(&[1, 2, 1, 2])).is_err());
        assert!(consecutive(&ticks(&[2, 3])).is_err());
    }

    #[test]
    fn two_copies_accept_interleaving_and_refuse_a_loss() {
        assert_eq!(two_copies_from(&ticks(&[1, 2, 3, 3, 4, 4, 5]), 2), Ok(2));
        assert_eq!(two_copies_from(&ticks(&[1, 2, 3, 4, 3, 5, 4]), 2), Ok(2));
        // Only one copy went on: none twice.
        assert_eq!(two_copies_from(&ticks(&[1, 2, 3, 4]), 2), Ok(0));
        // A value lost by one copy.
        assert!(two_copies_from(&ticks(&[1, 2, 3, 3, 5]), 2).is_err());
        // A third copy.
        assert!(two_copies_from(&ticks(&[1, 2, 3, 3, 3]), 2).is_err());
        // A repeat before the stop.
        assert!(two_copies_from(&ticks(&[1, 1, 2, 3]), 2).is_err());
    }
}
