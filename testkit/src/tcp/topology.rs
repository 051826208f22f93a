//! Three hosts behind a router: the source `a` and the destination `b` on
//! one link (a bridge in a fourth namespace, the router, at 10.232.0.254),
//! and the `client` on a link of its own (10.232.1.0/24) that the router
//! forwards to the first. The service address lives on `a` and moves to
//! `b` with the server: [`NamespaceMove`] is the ready-made
//! [`criu::migrate::AddressMove`] hook for these hosts (the router's
//! [`Hold`] on the service's packets, an iptables lock on the source,
//! `ip addr` on both, a gratuitous ARP from the new home). Everything is
//! removed on drop.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::hold::{Hold, GIVE_UP_PROBES, ROUTER_DEV};
use crate::hosts::{address_and_up, Host, Partial, TwoHosts};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The comment on the lock's firewall rules, to find them.
const LOCK_COMMENT: &str = "criu-rs-service-lock";

/// The source and destination (as a [`TwoHosts`], for its `migrate`), the
/// client host, the switch between them, and the service address.
#[derive(Debug)]
pub struct ThreeHosts {
    /// Hosts `a` (10.232.0.1) and `b` (10.232.0.2).
    pub pair: TwoHosts,
    /// The client host (10.232.1.3).
    pub client: Host,
    /// The address the server listens on: 10.232.0.100, on `a` at first.
    pub service: Ipv4Addr,
    switch: String,
}

/// The router's address on the link of `a` and `b`.
const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 254);
/// The router's address on the client's link.
const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 232, 1, 254);
/// The address no host has, through which the router holds the service's
/// packets (see [`Hold`]).
const PLACEHOLDER: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 253);

/// The fixed MAC address of host `last`'s `eth0` (02: locally administered),
/// so that the hook knows where to send what the router held.
fn mac_of(last: u8) -> String {
    format!("02:e8:00:00:00:{last:02x}")
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

/// `ip`'s standard output.
pub(super) fn ip_out(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(io::Error::other(format!(
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs the `ip` commands in `text` (one a line) in `netns`, in one
/// process, going on past a failing one (`-force`).
pub(super) fn ip_batch(netns: &str, text: &str) -> io::Result<()> {
    let out = feed(
        Command::new("ip").args(["-n", netns, "-force", "-batch", "-"]),
        text,
    )?;
    batch_outcome(&out, &format!("ip -batch in {netns}"), text)
}

/// `Ok` if the `ip -batch` that ran `text` succeeded, else an error naming
/// `what` ran, its lines and what it said.
pub(super) fn batch_outcome(out: &std::process::Output, what: &str, text: &str) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} ({}) failed: {}",
        text.trim().replace('\n', "; "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs `cmd` with `text` on its standard input; its standard error is
/// captured, its output discarded.
fn feed(cmd: &mut Command, text: &str) -> io::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    child.wait_with_output()
}

impl ThreeHosts {
    /// Creates the four namespaces, the router with its bridge, the links,
    /// the addresses and the routes. With `client_rto_min`, the client's
    /// route to the service carries that minimum retransmission timeout
    /// (Linux's default is 200 ms), which bounds how soon a client notices
    /// that the service is back.
    pub fn new(client_rto_min: Option<Duration>) -> io::Result<ThreeHosts> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let name = |role: &str| format!("criu-rs-tcp-{tag}-{role}");
        let host = |role: &str, net: u8, last: u8| Host {
            name: name(role),
            addr: Ipv4Addr::new(10, 232, net, last),
        };
        let switch = name("sw");
        ip(&["netns", "add", &switch])?;
        // From here on, drop removes whatever was made.
        let mut made = Partial(vec![switch.clone()]);
        let (a, b, client) = (host("a", 0, 1), host("b", 0, 2), host("c", 1, 3));
        router(&switch)?;
        for (i, h) in [&a, &b].into_iter().enumerate() {
            ip(&["netns", "add", &h.name])?;
            made.0.push(h.name.clone());
            attach(h, &switch, i)?;
        }
        ip(&["netns", "add", &client.name])?;
        made.0.push(client.name.clone());
        attach_client(&client, &switch)?;
        let service = Ipv4Addr::new(10, 232, 0, 100);
        let svc = format!("{service}/32");
        ip(&["-n", &a.name, "addr", "add", &svc, "dev", "eth0"])?;
        if let Some(rto) = client_rto_min {
            let rto = format!("{}ms", rto.as_millis().max(1));
            let via = ROUTER_CLIENT_ADDR.to_string();
            let c = &client.name;
            ip(&[
                "-n", c, "route", "add", &svc, "via", &via, "dev", "eth0", "rto_min", &rto,
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
            hold: Hold::new(&self.switch, self.service, PLACEHOLDER),
            macs: (mac_of(1), mac_of(2)),
        }
    }

    /// Whether the router still holds (or routes through the hold's
    /// placeholder) the service's packets: never, after a migration.
    pub fn hold_left(&self) -> io::Result<bool> {
        super::hold::left_on(&self.switch, self.service, PLACEHOLDER)
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

/// Makes `switch` a router: the bridge for `a` and `b` with the router's
/// address, forwarding on, and a neighbour table that asks long enough
/// for a [`Hold`] to outlast any migration.
fn router(switch: &str) -> io::Result<()> {
    ip(&["-n", switch, "link", "add", ROUTER_DEV, "type", "bridge"])?;
    ip(&["-n", switch, "link", "set", ROUTER_DEV, "up"])?;
    let addr = format!("{ROUTER_ADDR}/24");
    ip(&["-n", switch, "addr", "add", &addr, "dev", ROUTER_DEV])?;
    let probes = format!("net.ipv4.neigh.{ROUTER_DEV}.mcast_solicit={GIVE_UP_PROBES}");
    in_netns(
        switch,
        Command::new("sysctl").args(["-qw", "net.ipv4.ip_forward=1", &probes]),
    )?;
    Ok(())
}

/// Links `h`'s `eth0` (with a fixed MAC address) to the router's bridge,
/// gives it its address and the router as its gateway.
fn attach(h: &Host, switch: &str, i: usize) -> io::Result<()> {
    let port = format!("p{i}");
    let mac = mac_of(h.addr.octets()[3]);
    ip(&[
        "-n", &h.name, "link", "add", "eth0", "address", &mac, "type", "veth", "peer", "name",
        &port, "netns", switch,
    ])?;
    ip(&[
        "-n", switch, "link", "set", &port, "master", ROUTER_DEV, "up",
    ])?;
    address_and_up(h)?;
    let gw = ROUTER_ADDR.to_string();
    ip(&["-n", &h.name, "route", "add", "default", "via", &gw])
}

/// Links the client's `eth0` to the router's own port `c0` on the
/// client's link.
fn attach_client(h: &Host, switch: &str) -> io::Result<()> {
    ip(&[
        "-n", &h.name, "link", "add", "eth0", "type", "veth", "peer", "name", "c0", "netns", switch,
    ])?;
    let addr = format!("{ROUTER_CLIENT_ADDR}/24");
    ip(&["-n", switch, "addr", "add", &addr, "dev", "c0"])?;
    ip(&["-n", switch, "link", "set", "c0", "up"])?;
    address_and_up(h)?;
    let gw = ROUTER_CLIENT_ADDR.to_string();
    ip(&["-n", &h.name, "route", "add", "default", "via", &gw])
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

/// The address-move hook for two namespace hosts behind the router.
///
/// The lock is a set of iptables rules on the source, from before the
/// stop until the source copy is gone: every packet to and from the
/// service address dropped. The source must stay silent from the dump on: a
/// packet it sent after the dump (a retransmission of an answer whose
/// acknowledgement the router holds) would carry a newer TCP timestamp
/// than the restored socket continues from, and the client would then
/// discard the destination's answers as old (PAWS) until its
/// retransmission timer fired (seen: 0.85 s). So answers written between
/// the lock and the freeze are lost, and the destination sends them again
/// on its own timer. The move is `ip addr del` on the source, then
/// `ip addr add` on the destination; the announcement a gratuitous ARP.
///
/// The destination takes no lock of its own: a client packet that reached
/// it before the restore built its sockets would be answered with a reset
/// (without any hold, one restore in 60 failed that way), but while the
/// router holds, no packet for the service address reaches the link at
/// all. The clients sit behind the router, the router sends the service's
/// packets only to the placeholder until the release, and the only other
/// host on the link, the source, drops everything from the address and
/// has nothing that sends to it. The release comes after the restore, so
/// the first packet the destination gets for a connection finds its
/// socket. A destination lock would only add two `iptables-restore` runs,
/// one of them between the restore and the release (the clients' stall).
///
/// In front of both locks, the router holds the clients' packets to the
/// service address ([`Hold`]) instead of letting the locks drop them, so a
/// request sent while the server is stopped is answered as soon as it runs
/// again, not at the client's next retransmission (which backs off 0.2,
/// 0.4, 0.8 s...). The order:
///
/// 1. `lock`: the router starts holding, then the source is locked (if
///    the lock fails, the hold is released to the source at once);
/// 2. `move_to_dest`: the address moves (the hold keeps the destination
///    unreachable, see above);
/// 3. `announce` (the restore is done): the router sends what it held to
///    the destination and maps the address to it, then the gratuitous ARP;
/// 4. on failure, `move_back` puts the address back on the source, and
///    `unlock` removes the source's lock and only then releases the hold to
///    the source: the held requests reach the resumed server.
///
/// The hold is released or removed on every path: by `announce` or
/// `unlock`, by the failing `lock`, and when the hook is dropped.
#[derive(Debug)]
pub struct NamespaceMove {
    source: String,
    dest: String,
    addr: Ipv4Addr,
    iptables_restore: PathBuf,
    hold: Hold,
    /// The MAC addresses of the source's and the destination's `eth0`.
    macs: (String, String),
}

impl NamespaceMove {
    /// Uses another `iptables-restore` binary (a missing one shows the
    /// refusal when no lock can be taken).
    pub fn iptables_restore(mut self, path: impl Into<PathBuf>) -> Self {
        self.iptables_restore = path.into();
        self
    }

    /// Inserts (`-I`) or deletes (`-D`) the lock rules in `netns`, in one
    /// `iptables-restore --noflush` run: every packet to the service
    /// address and from it dropped.
    fn rules(&self, netns: &str, op: &str) -> io::Result<()> {
        let a = self.addr;
        let tag = format!("-m comment --comment {LOCK_COMMENT}");
        let text = format!(
            "*filter\n{op} INPUT -d {a}/32 {tag} -j DROP\n\
             {op} OUTPUT -s {a}/32 {tag} -j DROP\nCOMMIT\n"
        );
        let path = format!("/run/netns/{netns}");
        let bin = self.iptables_restore.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                let out =
                    feed(Command::new(&bin).args(["-w", "--noflush"]), &text).map_err(|e| {
                        io::Error::new(e.kind(), format!("running {}: {e}", bin.display()))
                    })?;
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
        self.hold.block()?;
        self.rules(&self.source, "-I").inspect_err(|_| {
            let _ = self.hold.release_to(&self.macs.0);
        })
    }

    /// No lock on the destination: the router's hold, taken by `lock`,
    /// keeps every packet for the address away from it until `announce`.
    fn move_to_dest(&self) -> io::Result<()> {
        self.addr_op(&self.source, "del")?;
        self.addr_op(&self.dest, "add")
    }

    /// The restore is done: what the router held goes to the destination
    /// at once, then the neighbours learn where the address lives.
    fn announce(&self) -> io::Result<()> {
        let released = self.hold.release_to(&self.macs.1);
        released.and(gratuitous_arp(&self.dest, self.addr))
    }

    fn move_back(&self) -> io::Result<()> {
        // Either may be where it should already (a move that half failed).
        let _ = self.addr_op(&self.dest, "del");
        let _ = self.addr_op(&self.source, "add");
        gratuitous_arp(&self.source, self.addr)
    }

    /// Removes the source's lock, then releases the hold (if `announce` has
    /// not) to the source, where the address is again.
    fn unlock(&self) -> io::Result<()> {
        let unlocked = self.rules(&self.source, "-D");
        unlocked.and(self.hold.release_to(&self.macs.0))
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
