//! Which strategy a migration uses: the public [`Strategy`], named here,
//! low in the module's layers (the wire's hello, the settings and the
//! reports name it; the strategies' code in `strategy/` sits above them).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How memory gets to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Dump everything locally, send it, restore.
    StopAndCopy,
    /// Stream memory pages into a `criu page-server` on the destination.
    PageServer,
    /// Post-copy: restore first, fetch memory on demand.
    Lazy,
    /// Pre-copy: memory crosses in passes while the tree runs (each pass
    /// only what was written since the previous one), then the tree is
    /// stopped and only the rest is dumped. Needs CRIU to track memory
    /// (soft-dirty bits, or the set-up's userfaultfd patch: see
    /// `docs/precopy-uffd.md`); the passes are bounded by a
    /// [`PreCopyPolicy`].
    PreCopy,
}

impl Strategy {
    /// The strategies that work on every kernel, in the order they are
    /// usually compared ([`Strategy::PreCopy`] needs memory tracking, so it
    /// is named on its own).
    pub const ALL: [Strategy; 3] = [Strategy::StopAndCopy, Strategy::PageServer, Strategy::Lazy];

    /// The kebab-case name (`stop-and-copy`, `page-server`, `lazy`,
    /// `pre-copy`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::PageServer => "page-server",
            Strategy::Lazy => "lazy",
            Strategy::PreCopy => "pre-copy",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Strategy, String> {
        Strategy::ALL
            .into_iter()
            .chain([Strategy::PreCopy])
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!("unknown strategy {s:?} (stop-and-copy, page-server, lazy, pre-copy)")
            })
    }
}

/// When the pre-copy strategy stops its passes and stops the tree: after
/// a pass that wrote no less than the one before it (the tree writes as
/// fast as the passes copy), after a pass that wrote at most
/// `remaining_bytes`, or after `max_passes` passes, whichever comes
/// first. The default: at most 5 passes, down to 8 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreCopyPolicy {
    max_passes: u32,
    remaining_bytes: u64,
}

impl Default for PreCopyPolicy {
    fn default() -> PreCopyPolicy {
        PreCopyPolicy {
            max_passes: 5,
            remaining_bytes: 8 << 20,
        }
    }
}

impl PreCopyPolicy {
    /// At most `n` passes before the final dump (at least one).
    pub fn max_passes(mut self, n: u32) -> PreCopyPolicy {
        self.max_passes = n.max(1);
        self
    }

    /// Stops the passes once one wrote at most `bytes` of memory.
    pub fn remaining_bytes(mut self, bytes: u64) -> PreCopyPolicy {
        self.remaining_bytes = bytes;
        self
    }

    /// Whether another pass follows pass `pass` (from 1), which wrote
    /// `written` bytes after a pass that wrote `previous`.
    pub(super) fn another_pass(&self, pass: u32, previous: Option<u64>, written: u64) -> bool {
        pass < self.max_passes
            && written > self.remaining_bytes
            && previous.is_none_or(|p| written < p)
    }
}
