//! Two "hosts" on one machine: network namespaces joined by a veth pair,
//! each with its own address. Names are unique per process and call; both
//! namespaces are deleted on drop.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::link::{accept_peer, receive_from, send_to, Link};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One network namespace with an address on the link to its peer.
#[derive(Debug)]
pub struct Host {
    /// Its `ip netns` name.
    pub name: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

impl Host {
    /// The namespace's bind-mount path, for `setns` or `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a new thread that has switched to this host's network
    /// namespace only (files, mounts and pids stay as they are). Sockets
    /// made there, and processes forked from there, belong to this host.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let ns = File::open(self.netns_path())?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only, with an open nsfs fd.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
        })
    }

    /// The inode of this host's network namespace.
    pub fn netns_inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.netns_path())?.ino())
    }
}

/// Two hosts, `a` (10.X.Y.1) and `b` (10.X.Y.2), linked by veth.
#[derive(Debug)]
pub struct TwoHosts {
    /// The first host (the source, by convention).
    pub a: Host,
    /// The second host (the destination).
    pub b: Host,
}

/// Runs `ip` with `args` (iproute2); an error names the command and quotes
/// its stderr. Shared with the other topologies (registry, three hosts).
pub(crate) fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    check_output("ip", args, &out)
}

/// `Ok` if `program args`, which produced `out`, succeeded; otherwise an
/// error that names the command and quotes its stderr.
pub(crate) fn check_output(program: &str, args: &[&str], out: &Output) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Gives `h`'s `eth0` its address (a /24) and brings `eth0` and `lo` up:
/// the last step of linking a host, whatever it is linked to.
pub(crate) fn address_and_up(h: &Host) -> io::Result<()> {
    ip(&[
        "-n",
        &h.name,
        "addr",
        "add",
        &format!("{}/24", h.addr),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &h.name, "link", "set", "eth0", "up"])?;
    ip(&["-n", &h.name, "link", "set", "lo", "up"])
}

impl TwoHosts {
    /// Creates both namespaces, the veth pair and the addresses, and
    /// brings the links up. Needs root and iproute2.
    pub fn new() -> io::Result<TwoHosts> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        TwoHosts::named(&format!("criu-rs-{tag}-a"), &format!("criu-rs-{tag}-b"))
    }

    /// [`TwoHosts::new`] with the namespaces' names. On failure, removes
    /// what it made and only that: a namespace of the same name that was
    /// there before (`ip netns add` refused it) is left alone.
    fn named(a: &str, b: &str) -> io::Result<TwoHosts> {
        let a = Host {
            name: a.to_string(),
            addr: Ipv4Addr::new(10, 231, 0, 1),
        };
        let b = Host {
            name: b.to_string(),
            addr: Ipv4Addr::new(10, 231, 0, 2),
        };
        ip(&["netns", "add", &a.name])?;
        // From here on, an early return removes what was made.
        let mut made = Partial(vec![a.name.clone()]);
        ip(&["netns", "add", &b.name])?;
        made.0.push(b.name.clone());
        // Created inside the namespaces, so the names never clash with the
        // machine's or another run's interfaces.
        ip(&[
            "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &b.name,
        ])?;
        for h in [&a, &b] {
            address_and_up(h)?;
        }
        made.0.clear();
        Ok(TwoHosts { a, b })
    }
}

/// Namespaces made so far by a constructor that has not returned yet;
/// dropped on its early return, it deletes them (and nothing else).
pub(crate) struct Partial(pub(crate) Vec<String>);

impl Drop for Partial {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a.name]);
        let _ = ip(&["netns", "del", &self.b.name]);
    }
}

/// The inode of the network namespace of `pid`.
pub fn netns_of(pid: i32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// Both sides of one migration from host a to host b.
#[derive(Debug)]
pub struct Migration {
    /// The source side's result.
    pub src: criu::Result<criu::migrate::SourceReport>,
    /// The destination side's result.
    pub dst: criu::Result<criu::migrate::DestReport>,
}

/// A relay between the source's connection and the receiver's, which may
/// damage the stream (for fault tests).
pub type Relay = fn(std::net::TcpStream, std::net::TcpStream);

/// A [`Relay`] that may carry state of its own (a probe to call at the
/// moment it cuts, say): the source's connection, then the receiver's.
pub type RelayFn = Box<dyn FnOnce(std::net::TcpStream, std::net::TcpStream) + Send>;

impl TwoHosts {
    /// Migrates the tree rooted at `pid` from host a to host b over plain
    /// TCP: `migrate::send` runs on a thread in host a, `migrate::receive`
    /// on a thread in host b (each forks its CRIU there). `src`/`dst` build
    /// the two sides' settings; `relay`, when given, sits in host b between
    /// the two connections.
    pub fn migrate<'a>(
        &self,
        pid: i32,
        src: impl FnOnce() -> criu::migrate::SourceConfig<'a> + Send,
        dst: impl FnOnce() -> criu::migrate::DestConfig<'a> + Send,
        relay: Option<Relay>,
    ) -> io::Result<Migration> {
        self.migrate_over([&Link::Plain, &Link::Plain], pid, src, dst, relay)
    }

    /// As [`TwoHosts::migrate`], through a relay that may hold state.
    pub fn migrate_through<'a>(
        &self,
        pid: i32,
        src: impl FnOnce() -> criu::migrate::SourceConfig<'a> + Send,
        dst: impl FnOnce() -> criu::migrate::DestConfig<'a> + Send,
        relay: Option<RelayFn>,
    ) -> io::Result<Migration> {
        self.migrate_boxed([&Link::Plain, &Link::Plain], pid, src, dst, relay)
    }

    /// As [`TwoHosts::migrate`], over `links` (host a's, host b's), through
    /// the same steps as the two commands of `examples/migrate_host`
    /// ([`crate::link::send_to`], [`crate::link::accept_peer`]).
    pub fn migrate_over<'a>(
        &self,
        links: [&Link; 2],
        pid: i32,
        src: impl FnOnce() -> criu::migrate::SourceConfig<'a> + Send,
        dst: impl FnOnce() -> criu::migrate::DestConfig<'a> + Send,
        relay: Option<Relay>,
    ) -> io::Result<Migration> {
        let relay = relay.map(|r| -> RelayFn { Box::new(r) });
        self.migrate_boxed(links, pid, src, dst, relay)
    }

    /// As [`TwoHosts::migrate_over`], through a relay that may hold state.
    pub fn migrate_over_through<'a>(
        &self,
        links: [&Link; 2],
        pid: i32,
        src: impl FnOnce() -> criu::migrate::SourceConfig<'a> + Send,
        dst: impl FnOnce() -> criu::migrate::DestConfig<'a> + Send,
        relay: Option<RelayFn>,
    ) -> io::Result<Migration> {
        self.migrate_boxed(links, pid, src, dst, relay)
    }

    fn migrate_boxed<'a>(
        &self,
        links: [&Link; 2],
        pid: i32,
        src: impl FnOnce() -> criu::migrate::SourceConfig<'a> + Send,
        dst: impl FnOnce() -> criu::migrate::DestConfig<'a> + Send,
        relay: Option<RelayFn>,
    ) -> io::Result<Migration> {
        let (src, dst) = self.across(
            |listener| -> criu::Result<_> {
                let listener = match relay {
                    None => listener,
                    Some(relay) => self.relayed(&listener, relay)?,
                };
                let (mut stream, _) = accept_peer(links[1], &listener)?;
                receive_from(&mut stream, dst())
            },
            |addr| send_to(links[0], addr, pid, src()),
        )?;
        Ok(Migration { src, dst })
    }

    /// One exchange from host a to host b over TCP, the scaffold of the
    /// two-host tests: `serve` runs on a thread in host b with a listener
    /// bound to b's address (a receiver accepts from it), `connect` runs
    /// in host a with that listener's address (a sender connects to it);
    /// returns both results once both have returned.
    pub fn across<S: Send, D: Send>(
        &self,
        serve: impl FnOnce(std::net::TcpListener) -> D + Send,
        connect: impl FnOnce(std::net::SocketAddr) -> S + Send,
    ) -> io::Result<(S, D)> {
        let listener = self
            .b
            .run(|| std::net::TcpListener::bind((self.b.addr, 0)))??;
        let addr = listener.local_addr()?;
        std::thread::scope(|s| {
            let served = s.spawn(|| self.b.run(|| serve(listener)));
            let sent = self.a.run(|| connect(addr))?;
            let served = served
                .join()
                .map_err(|_| io::Error::other("the destination thread panicked"))??;
            Ok((sent, served))
        })
    }

    /// A listener in host b that the receiver accepts from, fed by `relay`
    /// from the source's connection to `outer`.
    fn relayed(
        &self,
        outer: &std::net::TcpListener,
        relay: RelayFn,
    ) -> criu::Result<std::net::TcpListener> {
        use std::net::{TcpListener, TcpStream};
        let io = |what: &str| {
            let what = what.to_string();
            move |e| criu::Error::Io { what, source: e }
        };
        let inner = TcpListener::bind((self.b.addr, 0)).map_err(io("binding the relay"))?;
        let inner_addr = inner.local_addr().map_err(io("binding the relay"))?;
        let (from_src, _) = outer.accept().map_err(io("accepting the source"))?;
        std::thread::spawn(move || {
            if let Ok(to_dst) = TcpStream::connect(inner_addr) {
                relay(from_src, to_dst);
            }
        });
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        std::path::Path::new(&format!("/run/netns/{name}")).exists()
    }

    #[test]
    fn a_failed_new_removes_only_the_namespaces_it_made() {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let (a, b) = (format!("criu-rs-{tag}-a"), format!("criu-rs-{tag}-b"));
        // Someone else's namespace, under the name the second host wants.
        ip(&["netns", "add", &b]).unwrap();
        let theirs = Partial(vec![b.clone()]);
        let r = TwoHosts::named(&a, &b);
        assert!(r.is_err(), "`ip netns add` of an existing name fails");
        assert!(exists(&b), "the namespace it did not make is still there");
        assert!(!exists(&a), "the one it made is removed");
        drop(theirs);
        assert!(!exists(&b));
        // And a successful one is removed on drop.
        let hosts = TwoHosts::named(&a, &b).unwrap();
        assert!(exists(&a) && exists(&b));
        drop(hosts);
        assert!(!exists(&a) && !exists(&b));
    }
}
