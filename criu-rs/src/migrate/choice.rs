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
}

impl Strategy {
    /// All strategies, in the order they are usually compared.
    pub const ALL: [Strategy; 3] = [Strategy::StopAndCopy, Strategy::PageServer, Strategy::Lazy];

    /// The kebab-case name (`stop-and-copy`, `page-server`, `lazy`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::StopAndCopy => "stop-and-copy",
            Strategy::PageServer => "page-server",
            Strategy::Lazy => "lazy",
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
            .find(|st| st.name() == s)
            .ok_or_else(|| format!("unknown strategy {s:?} (stop-and-copy, page-server, lazy)"))
    }
}
