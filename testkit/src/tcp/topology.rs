//! Three hosts on one link: the source `a`, the destination `b` and the
//! `client`, network namespaces whose `eth0` hang on a bridge in a fourth
//! namespace (the switch). The service address lives on `a` and moves to
//! `b` with the server: [`NamespaceMove`] is the ready-made
//! [`criu::migrate::AddressMove`] hook for these hosts (an iptables lock on
//! the source, `ip addr` on both, a gratuitous ARP from the new home).
//! Everything is removed on drop.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::hosts::{Host, TwoHosts};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The comment on the lock's firewall rules, to find them.
const LOCK_COMMENT: &str = "criu-rs-service-lock";

/// The source and destination (as a [`TwoHosts`], for its `migrate`), the
/// client host, the switch between them, and the service address.
#[derive(Debug)]
pub struct ThreeHosts {
    /// Hosts `a` (10.232.0.1) and `b` (10.232.0.2).
    pub pair: TwoHosts,
    /// The client host (10.232.0.3).
    pub client: Host,
    /// The address the server listens on: 10.232.0.100, on `a` at first.
    pub service: Ipv4Addr,
    switch: String,
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn ip(args: &[&str]) -> io::Result<()> {
    run(Command::new("ip").args(args))
}

impl ThreeHosts {
    /// Creates the four namespaces, the bridge, the links and the
    /// addresses. With `client_rto_min`, the client's route to the service
    /// carries that minimum retransmission timeout (Linux's default is
    /// 200 ms), which bounds how soon a client notices that the service is
    /// back.
    pub fn new(client_rto_min: Option<Duration>) -> io::Result<ThreeHosts> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let name = |role: &str| format!("criu-rs-tcp-{tag}-{role}");
        let host = |role: &str, last: u8| Host {
            name: name(role),
            addr: Ipv4Addr::new(10, 232, 0, last),
        };
        let switch = name("sw");
        ip(&["netns", "add", &switch])?;
        // From here on, drop removes whatever was made.
        let mut made = Partial(vec![switch.clone()]);
        let (a, b, client) = (host("a", 1), host("b", 2), host("c", 3));
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, h) in [&a, &b, &client].into_iter().enumerate() {
            ip(&["netns", "add", &h.name])?;
            made.0.push(h.name.clone());
            attach(h, &switch, i)?;
        }
        let service = Ipv4Addr::new(10, 232, 0, 100);
        ip(&[
            "-n",
            &a.name,
            "addr",
            "add",
            &format!("{service}/32"),
            "dev",
            "eth0",
        ])?;
        if let Some(rto) = client_rto_min {
            let rto = format!("{}ms", rto.as_millis().max(1));
            let svc = format!("{service}/32");
            ip(&[
                "-n",
                &client.name,
                "route",
                "add",
                &svc,
                "dev",
                "eth0",
                "rto_min",
                &rto,
            ])?;
        }
        made.0.clear();
        Ok(ThreeHosts {
            pair: TwoHosts { a, b },
            client,
            service,
            switch,
        })
    }

    /// The ready-made hook that moves the service address from `a` to `b`.
    pub fn address_move(&self) -> NamespaceMove {
        NamespaceMove {
            source: self.pair.a.name.clone(),
            dest: self.pair.b.name.clone(),
            addr: self.service,
            iptables_restore: PathBuf::from("iptables-restore"),
            dest_locked: AtomicBool::new(false),
        }
    }

    /// Every firewall rule and chain in `host` beside the defaults (the
    /// `-A` and user-chain lines of `iptables-save`), to show that nothing
    /// was left behind.
    pub fn firewall_rules(host: &Host) -> io::Result<Vec<String>> {
        let out = in_netns(
            &host.name,
            Command::new("iptables-save").arg("-t").arg("filter"),
        )?;
        let text = String::from_utf8_lossy(&out);
        Ok(text
            .lines()
            .filter(|l| l.starts_with("-A") || (l.starts_with(':') && !is_builtin_chain(l)))
            .map(str::to_string)
            .collect())
    }

    /// The IPv4 addresses on `host`'s `eth0`.
    pub fn addresses(host: &Host) -> io::Result<Vec<Ipv4Addr>> {
        let out = Command::new("ip")
            .args(["-n", &host.name, "-4", "-o", "addr", "show", "dev", "eth0"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
                w.nth(1)?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    /// The namespaces this topology made (all gone after drop).
    pub fn namespaces(&self) -> Vec<String> {
        vec![
            self.pair.a.name.clone(),
            self.pair.b.name.clone(),
            self.client.name.clone(),
            self.switch.clone(),
        ]
    }
}

fn is_builtin_chain(line: &str) -> bool {
    ["INPUT", "FORWARD", "OUTPUT"]
        .iter()
        .any(|c| line.starts_with(&format!(":{c} ")))
}

/// Links `h`'s `eth0` to the switch's bridge and gives it its address.
fn attach(h: &Host, switch: &str, i: usize) -> io::Result<()> {
    let port = format!("p{i}");
    ip(&[
        "-n", &h.name, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
        switch,
    ])?;
    ip(&["-n", switch, "link", "set", &port, "master", "br0", "up"])?;
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

/// Namespaces made so far by a `new` that has not returned yet.
struct Partial(Vec<String>);

impl Drop for Partial {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

impl Drop for ThreeHosts {
    fn drop(&mut self) {
        // `pair` removes a and b.
        let _ = ip(&["netns", "del", &self.client.name]);
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// Runs `cmd` in the network namespace `netns` (only that namespace: a
/// thread that entered it forks the command) and returns its stdout.
fn in_netns(netns: &str, cmd: &mut Command) -> io::Result<Vec<u8>> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path)?;
            let out = cmd.stderr(Stdio::piped()).stdout(Stdio::piped()).output()?;
            if out.status.success() {
                Ok(out.stdout)
            } else {
                Err(io::Error::other(format!(
                    "{cmd:?} in {netns} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    })
}

fn enter(path: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on this thread only, with an open nsfs descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The address-move hook for two namespace hosts. The lock is a pair of
/// iptables rules (every packet to or from the service address dropped),
/// on the source from before the stop until the source copy is gone, and
/// on the destination from before the address arrives there until the
/// restore is done: a client that looks the address up again in between
/// (an ARP probe) would otherwise reach the destination before its
/// sockets exist and be reset. The move is `ip addr del` on the source,
/// then `ip addr add` on the destination; the announcement a gratuitous
/// ARP.
#[derive(Debug)]
pub struct NamespaceMove {
    source: String,
    dest: String,
    addr: Ipv4Addr,
    iptables_restore: PathBuf,
    dest_locked: AtomicBool,
}

impl NamespaceMove {
    /// Uses another `iptables-restore` binary (a missing one shows the
    /// refusal when no lock can be taken).
    pub fn iptables_restore(mut self, path: impl Into<PathBuf>) -> Self {
        self.iptables_restore = path.into();
        self
    }

    /// Inserts (`-I`) or deletes (`-D`) the two lock rules in `netns`, in
    /// one `iptables-restore --noflush` run.
    fn rules(&self, netns: &str, op: &str) -> io::Result<()> {
        let a = self.addr;
        let tag = format!("-m comment --comment {LOCK_COMMENT}");
        let text = format!(
            "*filter\n{op} INPUT -d {a}/32 {tag} -j DROP\n{op} OUTPUT -s {a}/32 {tag} -j DROP\nCOMMIT\n"
        );
        let path = format!("/run/netns/{netns}");
        let bin = self.iptables_restore.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                let mut child = Command::new(&bin)
                    .args(["-w", "--noflush"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("running {}: {e}", bin.display()))
                    })?;
                child
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(text.as_bytes())?;
                let out = child.wait_with_output()?;
                if out.status.success() {
                    return Ok(());
                }
                Err(io::Error::other(format!(
                    "{} {op}: {}",
                    bin.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            })
            .join()
            .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
        })
    }

    /// Removes the destination's lock, if it was taken.
    fn unlock_dest(&self) -> io::Result<()> {
        if self.dest_locked.swap(false, Ordering::SeqCst) {
            return self.rules(&self.dest, "-D");
        }
        Ok(())
    }

    fn addr_op(&self, netns: &str, op: &str) -> io::Result<()> {
        ip(&[
            "-n",
            netns,
            "addr",
            op,
            &format!("{}/32", self.addr),
            "dev",
            "eth0",
        ])
    }
}

impl criu::migrate::AddressMove for NamespaceMove {
    fn lock(&self) -> io::Result<()> {
        self.rules(&self.source, "-I")
    }

    fn move_to_dest(&self) -> io::Result<()> {
        self.rules(&self.dest, "-I")?;
        self.dest_locked.store(true, Ordering::SeqCst);
        self.addr_op(&self.source, "del")?;
        self.addr_op(&self.dest, "add")
    }

    /// The restore is done: the destination's lock goes, then the
    /// neighbours learn where the address lives.
    fn announce(&self) -> io::Result<()> {
        self.unlock_dest()?;
        gratuitous_arp(&self.dest, self.addr)
    }

    fn move_back(&self) -> io::Result<()> {
        // Either may be where it should already (a move that half failed).
        let _ = self.addr_op(&self.dest, "del");
        let unlocked = self.unlock_dest();
        let _ = self.addr_op(&self.source, "add");
        unlocked.and(gratuitous_arp(&self.source, self.addr))
    }

    fn unlock(&self) -> io::Result<()> {
        self.rules(&self.source, "-D")
    }
}

/// Broadcasts an ARP request for `addr` from `addr` on `eth0` of `netns`,
/// so that the link's neighbours map `addr` to this host's MAC address.
fn gratuitous_arp(netns: &str, addr: Ipv4Addr) -> io::Result<()> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path)?;
            send_garp(addr)
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    })
}

fn send_garp(addr: Ipv4Addr) -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: a plain socket call; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by the kernel, owned by no one else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (index, mac) = interface(sock.as_raw_fd(), "eth0")?;
    let frame = garp_frame(mac, addr);
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = index;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and the address outlive the call; sizes are theirs.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The index and MAC address of interface `name`.
fn interface(fd: i32, name: &str) -> io::Result<(i32, [u8; 6])> {
    // SAFETY: an all-zero ifreq is valid; the name is copied in below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX with a valid, NUL-terminated ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the index member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    // SAFETY: SIOCGIFHWADDR with the same ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the hardware-address member.
    let raw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, r) in mac.iter_mut().zip(raw.iter()) {
        *m = *r as u8;
    }
    Ok((index, mac))
}

/// An Ethernet broadcast frame holding an ARP request in which the sender
/// and target protocol addresses are both `addr`.
fn garp_frame(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&(libc::ETH_P_ARP as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&addr.octets());
    f
}
