//! Process trees, read from `/proc`.

use crate::pidfd::Pidfd;

/// Every task of the tree rooted at `root`, root first (threads' children
/// included), read from `/proc/<pid>/task/*/children`; a task that is gone
/// meanwhile is simply left out. (Crates built on this one hold a tree
/// with `crate::migrate::hold`, which signals through pidfds.)
pub(crate) fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// The memory a dump of the tree rooted at `root` writes, about: each
/// task's share of its anonymous and shared memory (`Pss_Anon` and
/// `Pss_Shmem` of `/proc/<pid>/smaps_rollup`, so that memory shared
/// between tasks counts once), or its resident set where the kernel does
/// not tell those. Tasks that are gone meanwhile count nothing.
#[cfg(feature = "migrate")]
pub(crate) fn memory_bytes(root: i32) -> u64 {
    tree(root).into_iter().map(task_memory).sum()
}

#[cfg(feature = "migrate")]
fn task_memory(pid: i32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    let kib = |field: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
    };
    let kb = match (kib("Pss_Anon:"), kib("Pss_Shmem:")) {
        (None, None) => kib("Rss:").unwrap_or(0),
        (anon, shmem) => anon.unwrap_or(0) + shmem.unwrap_or(0),
    };
    kb * 1024
}

/// The state letter of a task (`R`, `S`, `T`, `Z`...) from
/// `/proc/<pid>/stat`, or `None` if it does not exist.
pub(crate) fn state(pid: i32) -> Option<char> {
    Stat::of(pid)?.state()
}

#[cfg(feature = "migrate")]
/// The state letter of each thread of `pid`, from
/// `/proc/<pid>/task/<tid>/stat` (`None` for a thread that exited while
/// they were read), or `None` if the task does not exist.
pub(crate) fn thread_states(pid: i32) -> Option<Vec<Option<char>>> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let states = threads
        .flatten()
        .map(|t| Stat::read(t.path().join("stat"))?.state())
        .collect();
    Some(states)
}

/// A stat line of a task (`/proc/<pid>/stat`) or of one of its threads
/// (`/proc/<pid>/task/<tid>/stat`): the one parser of both.
struct Stat(String);

impl Stat {
    /// The stat line of the task `pid`, if it exists.
    fn of(pid: i32) -> Option<Stat> {
        Stat::read(format!("/proc/{pid}/stat"))
    }

    fn read(path: impl AsRef<std::path::Path>) -> Option<Stat> {
        std::fs::read_to_string(path).ok().map(Stat)
    }

    /// Field `n` as proc(5) numbers them, from 3 (the state) on: those
    /// after the command, which is skipped up to the line's last `)`
    /// since the command itself may hold spaces and parentheses.
    fn field(&self, n: usize) -> Option<&str> {
        let after_command = self.0.rsplit_once(')')?.1;
        after_command.split_whitespace().nth(n.checked_sub(3)?)
    }

    /// Field 3: the state letter.
    fn state(&self) -> Option<char> {
        self.field(3)?.chars().next()
    }
}

/// Whether `pid` exists and has not exited.
pub(crate) fn alive(pid: i32) -> bool {
    !matches!(state(pid), None | Some('Z' | 'X'))
}

/// Pidfds for every task of the tree rooted at `root` that still exists,
/// root first, but those whose pids are in `except` (the tasks a caller
/// holds already): one listing of the loops that stop a tree and list it
/// again until no new task appears (see [`open_listed`]).
pub(crate) fn tree_pidfds(root: i32, except: &[i32]) -> Vec<Pidfd> {
    let pids: Vec<i32> = tree(root)
        .into_iter()
        .filter(|p| !except.contains(p))
        .collect();
    open_listed(&listed(&pids))
}

/// `pids` with the start time each has now (the tasks gone are left
/// out): what tells a task from a later one that took its pid.
pub(crate) fn listed(pids: &[i32]) -> Vec<(i32, u64)> {
    pids.iter()
        .filter_map(|&p| Some((p, start_time(p)?)))
        .collect()
}

/// Pidfds of the tasks of `listed`, each opened only if the pid still
/// belongs to the task that was listed: its start time, read once the
/// pidfd is open, is the listed one. A task that exited between the
/// listing and the open, its pid taken by another process meanwhile, is
/// left out; one that exits after the open keeps a pidfd that signals
/// nothing.
pub(crate) fn open_listed(listed: &[(i32, u64)]) -> Vec<Pidfd> {
    listed
        .iter()
        .filter_map(|&(pid, start)| {
            let fd = Pidfd::open(pid).ok()?;
            (start_time(pid) == Some(start)).then_some(fd)
        })
        .collect()
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat`'s
/// 22nd field).
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    Stat::of(pid)?.field(22)?.parse().ok()
}

/// The parent of `pid` (`/proc/<pid>/stat`'s 4th field).
pub(crate) fn parent(pid: i32) -> Option<i32> {
    Stat::of(pid)?.field(4)?.parse().ok()
}

#[cfg(feature = "migrate")]
/// This process's children (of every thread) that hold a TCP socket bound
/// to `addr`, as pidfds: the CRIU that serves a lazy dump's pages there,
/// for one. Only our own children are considered, so nothing else can be
/// matched.
pub(crate) fn children_holding(addr: std::net::SocketAddr) -> Vec<Pidfd> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            kids.extend(
                list.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
    }
    kids.into_iter()
        .filter_map(|p| Pidfd::open(p).ok())
        .filter(|task| {
            let inodes = socket_inodes_bound_to(task.pid(), addr);
            !inodes.is_empty() && holds_any_socket(task.pid(), &inodes)
        })
        .collect()
}

#[cfg(feature = "migrate")]
/// Inodes of the TCP sockets bound to `addr` in the network namespace of
/// `pid`.
fn socket_inodes_bound_to(pid: i32, addr: std::net::SocketAddr) -> Vec<u64> {
    let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
    let want = proc_net_address(addr);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let matches = cols.get(1).is_some_and(|a| a.eq_ignore_ascii_case(&want));
            matches.then(|| cols.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

#[cfg(feature = "migrate")]
/// An address as `/proc/net/tcp{,6}` writes it: the IP's 32-bit words in
/// host order, in hex, then the port.
fn proc_net_address(addr: std::net::SocketAddr) -> String {
    let octets = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let ip: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{ip}:{:04X}", addr.port())
}

#[cfg(feature = "migrate")]
/// Whether `pid` has one of the socket `inodes` open.
pub(crate) fn holds_any_socket(pid: i32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|l| {
            let l = l.to_string_lossy();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

#[cfg(all(test, feature = "migrate"))]
mod tests {
    use super::*;

    #[test]
    fn a_pid_whose_task_is_not_the_listed_one_gets_no_pidfd() {
        // Before: the pidfds were opened by pid alone, so a process that
        // took the pid of a listed task between the listing and the open
        // was held (stopped, continued, killed) as one of the tree.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let now = listed(&[pid]);
        let start = now[0].1;
        assert_eq!(now, vec![(pid, start)]);
        let same = open_listed(&now);
        // The task listed earlier under this pid started at another time:
        // the one there now is another.
        let other = open_listed(&[(pid, start.wrapping_sub(1))]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(same.iter().map(Pidfd::pid).collect::<Vec<_>>(), vec![pid]);
        assert!(
            other.is_empty(),
            "a pidfd of another task than the listed one"
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_command() {
        // A command may hold spaces and parentheses: "x) S 1 (y".
        let stat = Stat("42 (x) S 1 (y) R 7 42 42 0 -1".to_string());
        assert_eq!(stat.state(), Some('R'));
        assert_eq!(stat.field(4), Some("7"));
        assert_eq!(stat.field(8), Some("-1"));
        assert_eq!(stat.field(9), None);
        assert_eq!(stat.field(2), None, "the command is not a field here");
        assert_eq!(Stat("42 (x".to_string()).state(), None);
    }

    #[test]
    fn every_thread_of_a_task_has_its_state_read() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || rx.recv());
        let me = std::process::id() as i32;
        // Until the parked thread sleeps (it may not have reached recv).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut states = thread_states(me).unwrap();
        while !states.contains(&Some('S')) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            states = thread_states(me).unwrap();
        }
        drop(tx);
        let _ = parked.join();
        assert!(states.len() >= 2, "this thread and the parked one");
        assert!(states.contains(&Some('R')), "this thread runs: {states:?}");
        assert!(
            states.contains(&Some('S')),
            "the parked one sleeps: {states:?}"
        );
        assert_eq!(thread_states(i32::MAX), None, "no such task");
    }

    #[test]
    fn addresses_are_written_as_proc_net_tcp_does() {
        let a: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(proc_net_address(a), "0100007F:1F90");
    }

    #[test]
    fn a_child_holding_a_listening_socket_is_found_and_no_other() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A child that inherits the listening socket: close-on-exec cleared
        // in the child only.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: fcntl is async-signal-safe; `fd` is open in the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let other = std::process::Command::new("sleep").arg("30").spawn();
        let mut other = other.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < deadline {
            found = children_holding(addr).iter().map(Pidfd::pid).collect();
        }
        for c in [&mut child, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(found, vec![child.id() as i32]);
    }
}
