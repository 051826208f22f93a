//! The router's hold on the service address: while the server moves, the
//! client's packets towards it wait in the router instead of being dropped
//! by the lock on `a` (or reaching `b` before its sockets exist), and are
//! delivered the moment the server is back.
//!
//! Why this and not a queueing discipline: the kernel here has no `plug`
//! qdisc (`CONFIG_NET_SCH_PLUG` is off and modules cannot be loaded), and
//! a qdisc on the way to `a` would hold frames already addressed to `a`'s
//! MAC address, useless once the address lives on `b`. The hold sits one
//! step earlier, where the router picks the MAC address: the route to the
//! service address is pointed at a placeholder neighbour that nobody
//! answers for, so the kernel queues every packet for it while it asks
//! (the unresolved-neighbour queue, `unres_qlen_bytes`, 212 kB by default).
//! Releasing gives the placeholder the MAC address of the host that now has
//! the service address, and the kernel sends the whole queue there at once;
//! then the route goes back to normal. The release is the one step
//! between the restore and the clients' next answer, so it is no process
//! start (an `ip` run took 7-25 ms there at load 3-5): [`Hold::block`]
//! starts an `ip -batch` that waits on its standard input in the router's
//! namespace, and the release only writes its lines there (`ip -batch`
//! runs each line as it arrives) and waits for the process to end. The
//! router's neighbour settings make
//! it ask [`GIVE_UP_PROBES`] times a second before giving up, so an
//! abandoned hold drops its packets after that long (the clients then
//! retransmit as before); the route is removed on release and on drop,
//! whatever happened, so a hold is never left in place.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Probes (one a second) before the router gives up on the placeholder
/// and drops what it holds: a bound on any hold, well above a migration.
pub const GIVE_UP_PROBES: u32 = 120;

/// The router's device towards `a` and `b`.
pub const ROUTER_DEV: &str = "br0";

/// One hold on the router: blocked by [`Hold::block`], released by
/// [`Hold::release_to`], and removed on drop if still blocked.
#[derive(Debug)]
pub struct Hold {
    router: String,
    service: Ipv4Addr,
    placeholder: Ipv4Addr,
    blocked: AtomicBool,
    /// The `ip -batch` waiting for the release's lines (while blocked).
    releaser: Mutex<Option<Child>>,
}

impl Hold {
    /// A hold on `service`'s packets in the `router` namespace, through
    /// `placeholder` (an address on the router's link that no host has).
    pub fn new(router: &str, service: Ipv4Addr, placeholder: Ipv4Addr) -> Hold {
        Hold {
            router: router.into(),
            service,
            placeholder,
            blocked: AtomicBool::new(false),
            releaser: Mutex::new(None),
        }
    }

    /// From now on the router queues every packet to the service address.
    pub fn block(&self) -> io::Result<()> {
        self.blocked.store(true, Ordering::SeqCst);
        let route = format!(
            "route replace {}/32 via {} dev {ROUTER_DEV}",
            self.service, self.placeholder
        );
        self.batch(&[route]).inspect_err(|_| {
            let _ = self.remove();
        })?;
        // Without it, the release starts its own process (slower, as sure).
        let waiting = spawn_waiting_batch(&self.router).ok();
        if let Some(earlier) = std::mem::replace(&mut *self.releaser(), waiting) {
            let _ = finish_batch(earlier, &[]); // a second block: reaped
        }
        Ok(())
    }

    fn releaser(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.releaser.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what is held to `mac` (the host that now has the service
    /// address), and tells the router that the address lives there. The
    /// route and the placeholder are removed even if the delivery failed.
    /// Nothing to do if not blocked.
    pub fn release_to(&self, mac: &str) -> io::Result<()> {
        if !self.blocked.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let (svc, ph) = (self.service, self.placeholder);
        let lines = [
            format!("neigh replace {ph} lladdr {mac} dev {ROUTER_DEV} nud reachable"),
            format!("neigh replace {svc} lladdr {mac} dev {ROUTER_DEV} nud reachable"),
        ];
        let waiting = self.releaser().take();
        let delivered = match waiting {
            Some(child) => finish_batch(child, &lines).or_else(|_| self.batch(&lines)),
            None => self.batch(&lines),
        };
        delivered.and(self.remove())
    }

    /// Removes the route and the placeholder (what it held is dropped).
    fn remove(&self) -> io::Result<()> {
        self.blocked.store(false, Ordering::SeqCst);
        if let Some(child) = self.releaser().take() {
            let _ = finish_batch(child, &[]);
        }
        let (svc, ph) = (self.service, self.placeholder);
        self.batch(&[
            format!("route del {svc}/32 via {ph} dev {ROUTER_DEV}"),
            format!("neigh del {ph} dev {ROUTER_DEV}"),
        ])
        .or_else(|e| match self.left() {
            Ok(false) => Ok(()),
            _ => Err(e),
        })
    }

    /// Whether the hold's route or placeholder is still on the router.
    pub fn left(&self) -> io::Result<bool> {
        left_on(&self.router, self.service, self.placeholder)
    }

    /// Runs `lines` in one `ip -batch` (one process, so that the steps
    /// follow each other closely), going on past a failing line.
    fn batch(&self, lines: &[String]) -> io::Result<()> {
        let mut text = lines.join("\n");
        text.push('\n');
        super::topology::ip_batch(&self.router, &text)
    }
}

/// An `ip -batch` in `netns` that runs each line written to its standard
/// input as it arrives.
fn spawn_waiting_batch(netns: &str) -> io::Result<Child> {
    Command::new("ip")
        .args(["-n", netns, "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// Writes `lines` to the waiting `ip -batch`, closes its input and waits
/// for it (it is reaped also when the write failed).
fn finish_batch(mut child: Child, lines: &[String]) -> io::Result<()> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let written = match child.stdin.take() {
        Some(mut input) => input.write_all(text.as_bytes()),
        None => Err(io::Error::other("the waiting ip -batch has no input")),
    };
    let out = child.wait_with_output()?;
    written?;
    super::topology::batch_outcome(&out, "the waiting ip -batch", &text)
}

/// Whether a hold's route to `service` or its `placeholder` neighbour is on
/// `router`.
pub fn left_on(router: &str, service: Ipv4Addr, placeholder: Ipv4Addr) -> io::Result<bool> {
    let route =
        super::topology::ip_out(&["-n", router, "route", "show", &format!("{service}/32")])?;
    let neigh = super::topology::ip_out(&[
        "-n",
        router,
        "neigh",
        "show",
        &placeholder.to_string(),
        "dev",
        ROUTER_DEV,
    ])?;
    Ok(!route.trim().is_empty() || !neigh.trim().is_empty())
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.blocked.load(Ordering::SeqCst) {
            let _ = self.remove();
        }
        if let Some(child) = self.releaser().take() {
            let _ = finish_batch(child, &[]);
        }
    }
}
