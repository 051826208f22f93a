//! Pre-flight: before `send` stops anything, it asks the destination
//! whether it can restore this tree, on the migration's own connection:
//! one length-prefixed JSON message each way, then the migration proper.
//!
//! The source describes the tree ([`Request`]): CRIU's version, the
//! architecture and kernel, the strategy, every pid and thread id, whether
//! the root is the init of its own PID namespace (then the ids need not be
//! free: the restore makes a new namespace), the files the tasks have open
//! or mapped (path and size), and the memory it holds. The destination
//! checks them against itself ([`evaluate`]) and answers with the
//! [`Problem`]s it found, each with a fix; any problem refuses the move,
//! and the source, never stopped, says why. Kernel differences are only
//! notes: CRIU restores across many of them.
//!
//! To be proposed to criu-rs's migration core (#22) as a step of its own
//! protocol; until then both ends must be `criu-rs` (or pass
//! `--no-preflight` on both to talk to another user of `criu::migrate`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The wire version of the exchange.
const VERSION: u32 = 1;
/// The largest message accepted (a tree with many open files stays far
/// below).
const MAX: u32 = 4 << 20;

/// What the source tells the destination about the tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// [`VERSION`].
    pub preflight: u32,
    /// CRIU's version on the source.
    pub criu_version: String,
    /// `std::env::consts::ARCH` of the source.
    pub arch: String,
    /// `uname -r` of the source.
    pub kernel: String,
    /// The migration strategy (`stop-and-copy`, `page-server`, `lazy`).
    pub strategy: String,
    /// Every pid and thread id of the tree, root first.
    pub ids: Vec<i32>,
    /// The root is the init of its own PID namespace.
    pub own_pid_ns: bool,
    /// Regular files the tasks have open or mapped, with their sizes.
    pub files: BTreeMap<String, u64>,
    /// Resident memory of the tree, bytes.
    pub rss_bytes: u64,
    /// The local addresses of the tree's TCP sockets (not wildcards, not
    /// loopback): with `--tcp-established` the restore waits for them to
    /// arrive here (the source's address hook moves them).
    #[serde(default)]
    pub tcp_addresses: Vec<String>,
}

/// One reason the destination refuses, and what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub reason: String,
    /// How to fix it.
    pub fix: String,
}

/// The destination's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Reply {
    /// [`VERSION`].
    pub preflight: u32,
    /// Why the move would fail; empty: go ahead.
    pub problems: Vec<Problem>,
    /// Differences that should not stop CRIU (a note for the user).
    pub notes: Vec<String>,
}

/// This host, as [`evaluate`] compares it.
#[derive(Debug, Clone)]
pub struct Host {
    /// CRIU's version here.
    pub criu_version: String,
    /// Whether CRIU offers lazy pages here.
    pub lazy_pages: bool,
    /// Where the images will land (`/dev/shm` when in memory).
    pub images_on: std::path::PathBuf,
    /// Whether the images are held in memory (a tmpfs).
    pub images_in_memory: bool,
}

/// The request for the tree rooted at `root`.
pub fn describe(root: i32, criu_version: &str, strategy: &str) -> Request {
    let pids = tree(root);
    let mut ids = Vec::new();
    let mut files = BTreeMap::new();
    let mut rss_bytes = 0;
    let mut tcp_addresses = std::collections::BTreeSet::new();
    for pid in &pids {
        ids.extend(threads(*pid));
        open_files(*pid, &mut files);
        rss_bytes += rss(*pid);
        tcp_addresses.extend(socket_addresses(*pid));
    }
    Request {
        preflight: VERSION,
        criu_version: criu_version.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        kernel: kernel(),
        strategy: strategy.to_string(),
        ids,
        own_pid_ns: is_pid_ns_init(root),
        files,
        rss_bytes,
        tcp_addresses: tcp_addresses.into_iter().map(|a| a.to_string()).collect(),
    }
}

/// The local addresses of `pid`'s TCP sockets, from its network
/// namespace's /proc/PID/net/tcp{,6}, matched by socket inode.
fn socket_addresses(pid: i32) -> Vec<std::net::IpAddr> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_str()?;
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            if let Some(ip) = local.split(':').next().and_then(proc_ip) {
                if !ip.is_unspecified() && !ip.is_loopback() {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// An address as /proc/net/tcp writes it: 32-bit words in host order.
fn proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(std::net::Ipv4Addr::from(word(0)?).into()),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = std::net::Ipv6Addr::from(b);
            Some(v6.to_ipv4_mapped().map_or(v6.into(), Into::into))
        }
        _ => None,
    }
}

/// Waits (up to `limit`) until every address of `addrs` is assigned on
/// this host: a UDP socket can bind to it. The restore of TCP sockets
/// needs their addresses present, and the source's address hook moves
/// them concurrently with the end of the image transfer.
///
/// TEMPORARY: until criu-rs's migration orders the destination's restore
/// after the source's `move_to_dest` (today the destination restores as
/// soon as the images are in, racing the move).
pub fn wait_for_addresses(addrs: &[String], limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let ips: Vec<std::net::IpAddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
    loop {
        if ips
            .iter()
            .all(|ip| std::net::UdpSocket::bind((*ip, 0)).is_ok())
        {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Every task of the tree rooted at `root`, root first, from
/// `/proc/PID/task/*/children` (a task gone meanwhile is left out).
fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    out
}

fn threads(pid: i32) -> Vec<i32> {
    let mut t: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    t.sort_unstable();
    // The task itself first.
    t.retain(|x| *x != pid);
    t.insert(0, pid);
    t
}

/// Open descriptors and file mappings that are regular files.
fn open_files(pid: i32, files: &mut BTreeMap<String, u64>) {
    let mut paths = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        paths.extend(
            fds.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok()),
        );
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    paths.extend(
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with('/'))
            .map(std::path::PathBuf::from),
    );
    for p in paths {
        let Some(s) = p.to_str() else { continue };
        if !s.starts_with('/') || s.ends_with(" (deleted)") || s.starts_with("/dev/") {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                files.insert(s.to_string(), m.len());
            }
        }
    }
}

fn rss(pid: i32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0) * 1024
}

fn status_field(pid: i32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The root is pid 1 of a PID namespace of its own (`NSpid: N 1`).
fn is_pid_ns_init(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(|l| {
            let ids: Vec<&str> = l.split_whitespace().skip(1).collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// What stands in the way of restoring the tree of `req` on `host`.
pub fn evaluate(req: &Request, host: &Host) -> Reply {
    let mut r = Reply {
        preflight: VERSION,
        ..Reply::default()
    };
    let mut refuse = |reason: String, fix: String| r.problems.push(Problem { reason, fix });
    if req.preflight != VERSION {
        refuse(
            format!(
                "the source speaks pre-flight version {}, this host {VERSION}",
                req.preflight
            ),
            "use the same criu-rs on both hosts".into(),
        );
    }
    if req.arch != std::env::consts::ARCH {
        refuse(
            format!("the tree runs on {}, this host is {}", req.arch, std::env::consts::ARCH),
            "CRIU restores only on the CPU architecture it dumped: choose a destination of the same one".into(),
        );
    }
    if version_key(&host.criu_version) < version_key(&req.criu_version) {
        refuse(
            format!(
                "the source has CRIU {}, this host an older {}",
                req.criu_version, host.criu_version
            ),
            "install the same CRIU version on both hosts (scripts/setup.sh builds 4.2.1)".into(),
        );
    }
    if req.strategy == "lazy" && !host.lazy_pages {
        refuse(
            "the lazy strategy needs userfaultfd lazy pages, which CRIU here lacks".into(),
            "use --strategy stop-and-copy or page-server, or a kernel with userfaultfd".into(),
        );
    }
    if !req.own_pid_ns {
        let taken: Vec<String> = req
            .ids
            .iter()
            .filter(|id| Path::new(&format!("/proc/{id}")).exists())
            .map(|id| id.to_string())
            .collect();
        if !taken.is_empty() {
            refuse(
                format!("pid(s) {} of the tree are taken here (CRIU restores every pid and thread id as it was)", taken.join(", ")),
                "stop what uses them here, or run the tree as the init of its own PID namespace (unshare --pid --fork) so that its pids need not be free".into(),
            );
        }
    }
    let mut sizes = Vec::new();
    for (path, size) in &req.files {
        match std::fs::metadata(path) {
            Err(_) => refuse(
                format!("{path}, open or mapped by the tree, does not exist here"),
                "copy the tree's files to the same paths on this host (CRIU reopens them by path)".into(),
            ),
            // A note only: a file the tree writes changes size until the
            // dump (CRIU checks the size it had then).
            Ok(m) if m.is_file() && m.len() != *size => sizes.push(format!(
                "{path} has {} bytes here, {size} on the source (the restore needs the size it has at the dump)",
                m.len()
            )),
            Ok(_) => {}
        }
    }
    let needed = if host.images_in_memory {
        2 * req.rss_bytes
    } else {
        req.rss_bytes
    };
    if let Some(avail) = mem_available() {
        if avail < needed {
            refuse(
                format!(
                    "the tree needs about {} of memory here ({}), {} is available",
                    mib(needed),
                    if host.images_in_memory {
                        "its images in memory, then the tree"
                    } else {
                        "the restored tree"
                    },
                    mib(avail)
                ),
                "free memory here, or give --work-dir on a disk with room for the images".into(),
            );
        }
    }
    if let Some(space) = free_space(&host.images_on) {
        if space < req.rss_bytes {
            refuse(
                format!(
                    "{} has {} free, the images need about {}",
                    host.images_on.display(),
                    mib(space),
                    mib(req.rss_bytes)
                ),
                "give --work-dir on a file system with room".into(),
            );
        }
    }
    r.notes.extend(sizes);
    if req.kernel != kernel() {
        r.notes.push(format!(
            "kernels differ: source {}, here {}",
            req.kernel,
            kernel()
        ));
    }
    r
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Writes one message: a big-endian u32 length, then JSON.
pub fn write_msg(w: &mut (impl Write + ?Sized), value: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one message written by [`write_msg`].
pub fn read_msg<T: for<'de> Deserialize<'de>>(r: &mut (impl Read + ?Sized)) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX {
        return Err(std::io::Error::other(format!(
            "a pre-flight message of {len} bytes (is the peer criu-rs with pre-flight? else --no-preflight on both)"
        )));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| {
        std::io::Error::other(format!(
            "not a pre-flight message ({e}): is the peer criu-rs with pre-flight? else --no-preflight on both"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            criu_version: "4.2.1".into(),
            lazy_pages: true,
            images_on: "/tmp".into(),
            images_in_memory: false,
        }
    }

    #[test]
    fn this_process_described_here_is_refused_for_its_own_pids() {
        let req = describe(std::process::id() as i32, "4.2.1", "stop-and-copy");
        assert_eq!(req.ids[0], std::process::id() as i32);
        assert!(req.ids.len() > 1, "the test harness has threads");
        assert!(req.rss_bytes > 0);
        assert!(req
            .files
            .keys()
            .any(|f| f.contains("libc") || f.contains("criu_rs")));
        let reply = evaluate(&req, &host());
        assert_eq!(reply.problems.len(), 1, "{reply:?}");
        assert!(reply.problems[0].reason.contains("are taken here"));
        assert!(reply.problems[0].fix.contains("unshare --pid"));
    }

    #[test]
    fn missing_files_old_criu_other_arch_and_no_lazy_pages_are_refused() {
        let mut req = describe(std::process::id() as i32, "9.9.9", "lazy");
        req.own_pid_ns = true;
        req.arch = "riscv64-not-here".into();
        req.files.insert("/nonexistent/criu-rs-preflight".into(), 3);
        let reply = evaluate(
            &req,
            &Host {
                lazy_pages: false,
                ..host()
            },
        );
        let reasons: Vec<&str> = reply.problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reply.problems.len(), 4, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("does not exist here")));
        assert!(reasons.iter().any(|r| r.contains("older")));
        assert!(reasons.iter().any(|r| r.contains("this host is")));
        assert!(reasons.iter().any(|r| r.contains("lazy")));
    }

    #[test]
    fn proc_net_addresses_read_back() {
        assert_eq!(proc_ip("0100007F"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(proc_ip("644D0A0A"), Some("10.10.77.100".parse().unwrap()));
        assert_eq!(
            proc_ip("0000000000000000FFFF00000100007F"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(proc_ip("zz"), None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Loopback is left out: it is on every host.
        assert!(socket_addresses(std::process::id() as i32).is_empty());
        drop(l);
        assert!(wait_for_addresses(
            &["127.0.0.1".into()],
            std::time::Duration::ZERO
        ));
        assert!(!wait_for_addresses(
            &["192.0.2.77".into()],
            std::time::Duration::from_millis(20)
        ));
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let req = describe(std::process::id() as i32, "4.2.1", "page-server");
        let mut buf = Vec::new();
        write_msg(&mut buf, &req).unwrap();
        let back: Request = read_msg(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
        let huge = [0xffu8, 0xff, 0xff, 0xff];
        assert!(read_msg::<Request>(&mut huge.as_slice()).is_err());
        let mut junk = Vec::new();
        junk.extend_from_slice(&5u32.to_be_bytes());
        junk.extend_from_slice(b"hello");
        assert!(read_msg::<Request>(&mut junk.as_slice()).is_err());
    }
}
