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
//! then the route goes back to normal. The router's neighbour settings make
//! it ask [`GIVE_UP_PROBES`] times a second before giving up, so an
//! abandoned hold drops its packets after that long (the clients then
//! retransmit as before); the route is removed on release and on drop,
//! whatever happened, so a hold is never left in place.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};

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
        })
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
        let delivered = self.batch(&[
            format!("neigh replace {ph} lladdr {mac} dev {ROUTER_DEV} nud reachable"),
            format!("neigh replace {svc} lladdr {mac} dev {ROUTER_DEV} nud reachable"),
        ]);
        delivered.and(self.remove())
    }

    /// Removes the route and the placeholder (what it held is dropped).
    fn remove(&self) -> io::Result<()> {
        self.blocked.store(false, Ordering::SeqCst);
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
    }
}
