//! Migrating a server with its established TCP connections: the service
//! address moves with the process, and no packet may reach a host that has
//! no socket for it (the kernel would answer with a reset).
//!
//! CRIU dumps and restores the connections itself (`tcp_established`, TCP
//! repair). What it does not do for a migration between hosts is keep the
//! connections quiet between the dump and the restore: when CRIU runs in
//! the process's own network namespace it locks each connection with
//! per-connection firewall rules on the source only, and then either
//! removes them at the end of a leave-running dump (the migration dumps that
//! way, to be able to resume the source) or leaves them behind for a restore
//! on the same host to remove. So the migration holds a lock of its own,
//! taken by the caller's [`AddressMove`] hook, from just before the tree is
//! stopped until the source copy is gone:
//!
//! 1. `lock` (source): drop everything to and from the service address
//!    (nothing the source sends after the dump may reach a client: its TCP
//!    timestamps would run ahead of the restored sockets'), at CRIU's
//!    pre-dump notification,
//!    before anything is frozen; if it fails, the dump is refused and the
//!    source never stops;
//! 2. the dump (CRIU's own lock, chosen in [`Connections::new`], covers its
//!    repair of the sockets; [`NetworkLock::Skip`] is right here, since the
//!    hook's lock is the external lock CRIU's documentation asks for);
//! 3. `move_to_dest`: the destination is locked (at least against what
//!    comes in for the service address), then the
//!    address leaves the source and joins the destination, before the
//!    restore (which binds the sockets to it). Neighbours mostly still send
//!    to the source, which drops; but one that looks the address up again
//!    now (an ARP probe) finds the destination, which must not answer for
//!    connections its restore has not built yet (without this lock, one
//!    restore in 60 failed with "Can't restore not-sent send queue data:
//!    Connection reset by peer", most likely such a packet);
//! 4. the restore on the destination (`tcp_established`), then `announce`:
//!    the destination's lock goes and neighbours learn the address's new
//!    home (gratuitous ARP);
//! 5. the source copy is killed and waited for (its sockets close while the
//!    lock holds, so no reset escapes), then `unlock`.
//!
//! If anything fails after step 1, the address goes back (`move_back`, if
//! it had moved), the lock is released and the source resumes with its
//! connections: clients see a stall, not an error.
//!
//! A lock that drops the clients' packets makes each client wait for its
//! own retransmission timer, which backs off (0.2, 0.4, 0.8 s...): the
//! clients' stall then ends anywhere from 1x to 2x the downtime. A hook
//! that can, should rather *hold* them in the network in front of both
//! hosts, from `lock` (before the stop) until `announce` (then to the
//! destination) or, on failure, `unlock` (to the source, after its lock is
//! gone), so a request sent during the move is answered as soon as the
//! server runs again. The testkit's namespace hook does this in its router
//! (a route through a neighbour nobody answers for queues the packets; the
//! kernel's `plug` qdisc made for this is often not built); a hold must be
//! released on every path, or the service stays unreachable. A hold that
//! keeps *every* packet for the address off the destination's link until
//! `announce` makes the destination's lock of step 3 redundant (nothing can
//! reach the destination before its sockets exist), and the hook may skip
//! it: that lock's removal would otherwise sit between the restore and the
//! release, in every client's stall. The source's lock stays: it is what
//! keeps the source silent after the dump.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::wire::failed;
use crate::error::{Error, Result, SourceState, Step};
use crate::options::{NetworkLock, Options};

/// The caller's steps that move a service address between the hosts and
/// keep its traffic away from both while the process moves. Each step is
/// called once, from the source side, in the order the module docs give;
/// `move_back` and `unlock` also on failure.
pub trait AddressMove: Send + Sync {
    /// Drops every packet to and from the service address on the source
    /// host (called before the tree is stopped); a hook that holds the
    /// clients' packets starts holding here, first. On error, nothing may
    /// stay locked or held (`unlock` is not called then).
    fn lock(&self) -> io::Result<()>;
    /// Locks the destination host against what comes in for the address
    /// (unless a hold keeps every such packet off it, see the module
    /// docs), removes the address from the source host and adds it to the
    /// destination host (after the dump, before the restore).
    fn move_to_dest(&self) -> io::Result<()>;
    /// Unlocks the destination host (if locked), releases any held packets
    /// to it and tells the neighbours that the address now lives there
    /// (after the restore).
    fn announce(&self) -> io::Result<()>;
    /// Undoes `move_to_dest` (the destination's lock included) and tells
    /// the neighbours (on failure).
    fn move_back(&self) -> io::Result<()>;
    /// Releases the lock taken by `lock`, then any packets still held (to
    /// the source: `announce` was not reached). Called last, on every path
    /// where `lock` succeeded.
    fn unlock(&self) -> io::Result<()>;
}

/// Migrate the tree's established TCP connections: CRIU's network-lock
/// method for the dump, and the hook that moves the service address. Set
/// with [`super::SourceConfig::connections`]; the destination needs
/// [`super::DestConfig::tcp_established`].
pub struct Connections<'a> {
    pub(super) network_lock: NetworkLock,
    pub(super) hook: Box<dyn AddressMove + 'a>,
}

impl<'a> Connections<'a> {
    /// `network_lock` is the method CRIU uses while it repairs the sockets
    /// (the restore uses the same one, recorded in the images).
    pub fn new(network_lock: NetworkLock, hook: impl AddressMove + 'a) -> Connections<'a> {
        Connections {
            network_lock,
            hook: Box::new(hook),
        }
    }

    /// Adds what the dump of connections needs.
    pub(super) fn dump_options(&self, o: &mut Options<'_>) {
        o.tcp_established(true).network_lock(self.network_lock);
    }
}

/// One migration's progress through the hook's steps. Dropped before
/// [`ServiceMove::finish`], it moves the address back and unlocks.
pub(super) struct ServiceMove<'c> {
    hook: &'c dyn AddressMove,
    locked: AtomicBool,
    lock_error: Mutex<Option<String>>,
    moved: AtomicBool,
    finished: AtomicBool,
}

/// The error of a dump that failed with the source in `state`.
pub(super) fn dump_failed(e: Error, state: SourceState) -> Error {
    let message = match state {
        SourceState::Untouched => "the dump failed; the source process ran on",
        _ => "the dump failed; the source process was resumed",
    };
    failed(Step::Dump, state, message, Some(e))
}

fn hook_error(step: &str, e: io::Error) -> Error {
    Error::io(format!("the address-move hook's {step} step"), e)
}

impl<'c> ServiceMove<'c> {
    pub(super) fn new(c: &'c Connections<'_>) -> ServiceMove<'c> {
        ServiceMove {
            hook: c.hook.as_ref(),
            locked: AtomicBool::new(false),
            lock_error: Mutex::new(None),
            moved: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        }
    }

    /// Takes the lock (at pre-dump); the error refuses the notification.
    pub(super) fn lock(&self) -> std::result::Result<(), String> {
        match self.hook.lock() {
            Ok(()) => {
                self.locked.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let m = format!("taking the network lock for the service address: {e}");
                *self.lock_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
                Err(m)
            }
        }
    }

    /// The error to return when the dump failed: a clear one if it was the
    /// lock, taken before anything froze; else `state` is the source's.
    pub(super) fn dump_failed(&self, e: Error, state: SourceState) -> Error {
        match self
            .lock_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(m) => failed(
                Step::Connections,
                SourceState::Untouched,
                format!(
                    "{m}; nothing was frozen and the source runs on (install iptables or \
                     nftables, or fix the hook)"
                ),
                Some(e),
            ),
            None => dump_failed(e, state),
        }
    }

    pub(super) fn move_to_dest(&self) -> Result<()> {
        self.moved.store(true, Ordering::SeqCst);
        self.hook
            .move_to_dest()
            .map_err(|e| hook_error("move_to_dest", e))
    }

    pub(super) fn announce(&self) -> Result<()> {
        self.hook.announce().map_err(|e| hook_error("announce", e))
    }

    /// The source copy is gone: releases the lock.
    pub(super) fn finish(&self) -> Result<()> {
        self.finished.store(true, Ordering::SeqCst);
        self.hook.unlock().map_err(|e| hook_error("unlock", e))
    }
}

impl Drop for ServiceMove<'_> {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        // Best effort: the migration's error is already on its way out.
        if self.moved.load(Ordering::SeqCst) {
            let _ = self.hook.move_back();
        }
        if self.locked.load(Ordering::SeqCst) {
            let _ = self.hook.unlock();
        }
    }
}
