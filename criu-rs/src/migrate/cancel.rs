//! Cancelling a migration from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What wakes a migration's blocked waits when it is cancelled.
type Waker = Box<dyn Fn() + Send + Sync>;

/// A token that cancels the migrations it was given to
/// ([`super::SourceConfig::cancel`], [`super::DestConfig::cancel`]).
/// Clone it and call [`Cancel::cancel`] from any thread: a thread that
/// waits for SIGINT / SIGTERM (`sigwait`, signal-hook's iterator) is the
/// usual one. Not from inside a signal handler itself: cancelling wakes
/// the migration's blocked reads, which takes a lock.
///
/// What a cancelled migration does:
///
/// * the source, until the destination reported its restore: the dump is
///   refused at CRIU's next notification, or the transfer stops; the tree
///   is resumed; the destination is told;
/// * the source while a lazy migration serves its pages: the dump ends,
///   the tree is resumed and the destination drops its copy (which cannot
///   run without the pages);
/// * the source after a restore of any other strategy: nothing, the move
///   is past its point of no return (the destination runs the tree) and
///   ends in milliseconds;
/// * the destination, at any point until it has answered the source's
///   `Done`: removes what it received, kills a half-restored or restored
///   tree, and tells the source, which resumes its copy.
///
/// The error is then a migration error that
/// [`is_cancelled`](crate::MigrationError::is_cancelled).
///
/// ```no_run
/// use criu::migrate::{self, Cancel, SourceConfig, Strategy};
/// use nix::sys::signal::{SigSet, Signal};
///
/// # fn main() -> criu::Result<()> {
/// // Block the signals in every thread, and wait for them in one.
/// let mut signals = SigSet::empty();
/// signals.add(Signal::SIGINT);
/// signals.add(Signal::SIGTERM);
/// signals.thread_block().expect("blocking the signals");
/// let cancel = Cancel::new();
/// let on_signal = cancel.clone();
/// std::thread::spawn(move || {
///     if signals.wait().is_ok() {
///         on_signal.cancel();
///     }
/// });
/// let mut stream = std::net::TcpStream::connect("10.0.0.2:7700").unwrap();
/// let cfg = SourceConfig::new(Strategy::PageServer).cancel(&cancel);
/// migrate::send(&criu::Criu::new(), 4242, &mut stream, cfg)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    next: AtomicU64,
    wakers: Mutex<Vec<(u64, Waker)>>,
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// A token nobody has cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels the migrations that hold this token (once is enough; later
    /// calls do nothing more).
    pub fn cancel(&self) {
        if self.0.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        for (_, wake) in self.wakers().iter() {
            wake();
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Runs `wake` when the token is cancelled (at once if it is already),
    /// until the returned guard is dropped.
    pub(super) fn on_cancel(&self, wake: Option<Waker>) -> Registered<'_> {
        let Some(wake) = wake else {
            return Registered(self, None);
        };
        let id = self.0.next.fetch_add(1, Ordering::SeqCst);
        self.wakers().push((id, wake));
        // Cancelled before the push: `cancel` may not have seen it (a
        // second wake-up is harmless).
        if self.is_cancelled() {
            if let Some((_, w)) = self.wakers().iter().find(|(i, _)| *i == id) {
                w();
            }
        }
        Registered(self, Some(id))
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Waker)>> {
        self.0.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A waker registered with [`Cancel::on_cancel`]; removed on drop.
pub(super) struct Registered<'c>(&'c Cancel, Option<u64>);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.1 {
            self.0.wakers().retain(|(w, _)| *w != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::Cancel;

    #[test]
    fn cancelling_wakes_the_registered_waits_once() {
        let c = Cancel::new();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        let guard = c.on_cancel(Some(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        })));
        let other = c.clone();
        std::thread::spawn(move || other.cancel()).join().unwrap();
        c.cancel();
        assert!(c.is_cancelled());
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        drop(guard);
    }
}
