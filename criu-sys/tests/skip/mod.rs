//! A skip is a failure unless expected: the protocol of the workspace's
//! test kit (`criu_testkit::skip`), which this crate, published on its own,
//! cannot depend on. The skip is printed, appended to the file named by
//! `CRIU_RS_SKIP_LOG` (`id`, a tab, the reason), and fails the test unless
//! `CRIU_RS_ALLOWED_SKIPS` (ids separated by whitespace or commas) lists
//! its id. The caller returns right after.

use std::io::Write;

#[track_caller]
pub fn skip(id: &str, reason: &str) {
    eprintln!("SKIPPED {id}: {reason}");
    let allowed = std::env::var("CRIU_RS_ALLOWED_SKIPS").unwrap_or_default();
    let ok = allowed
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|a| !a.is_empty() && a == id);
    if let Some(log) = std::env::var_os("CRIU_RS_SKIP_LOG") {
        let note = if ok { "" } else { " (NOT allow-listed)" };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| writeln!(f, "{id}\t{reason}{note}"))
            .unwrap_or_else(|e| panic!("{id}: cannot record the skip in {log:?}: {e}"));
    }
    assert!(
        ok,
        "{id} cannot run here: {reason}. A skip is a failure unless it is expected on this \
         machine: add {id} to CRIU_RS_ALLOWED_SKIPS (the Makefile's ALLOWED_SKIPS, with the \
         reason) if it is"
    );
}
