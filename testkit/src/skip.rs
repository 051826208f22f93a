//! Skips that cannot pass for passes.
//!
//! A test that cannot run on a machine calls [`skip`] and returns. The skip
//! is printed, appended to the file named by `CRIU_RS_SKIP_LOG` (the
//! Makefile's `test` target sets it, and prints the file at the end), and
//! fails the test unless its id is listed in `CRIU_RS_ALLOWED_SKIPS`
//! (whitespace- or comma-separated ids; the Makefile sets it, with the
//! reason for each entry). So a skip nobody expected on this machine is a
//! failure, never an `ok` that hides its stderr.
//!
//! The protocol is the two variables and one line per skip (`id`, a tab,
//! the reason); `criu-sys`, which is published on its own and cannot use
//! this crate, follows it in its tests with a few lines of its own.

use std::io::Write;

/// The variable listing the skips expected on this machine.
pub const ALLOWED_VAR: &str = "CRIU_RS_ALLOWED_SKIPS";
/// The variable naming the file each skip is appended to.
pub const LOG_VAR: &str = "CRIU_RS_SKIP_LOG";

/// Whether `id` is in the allow-list `allowed` (ids separated by
/// whitespace or commas).
pub fn is_allowed(allowed: &str, id: &str) -> bool {
    allowed
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|a| !a.is_empty() && a == id)
}

/// Skips the test `id` (say `operations::a_kernel_thread_is_refused_with_a_kind`)
/// for `reason`: prints it, records it in `CRIU_RS_SKIP_LOG`, and panics
/// unless `CRIU_RS_ALLOWED_SKIPS` lists `id`. The caller returns right after.
#[track_caller]
pub fn skip(id: &str, reason: &str) {
    eprintln!("SKIPPED {id}: {reason}");
    let allowed = std::env::var(ALLOWED_VAR).unwrap_or_default();
    let ok = is_allowed(&allowed, id);
    if let Some(log) = std::env::var_os(LOG_VAR) {
        let line = format!(
            "{id}\t{reason}{}\n",
            if ok { "" } else { " (NOT allow-listed)" }
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("{id}: cannot record the skip in {log:?} ({LOG_VAR}): {e}");
        }
    }
    assert!(
        ok,
        "{id} cannot run here: {reason}. A skip is a failure unless it is expected on this \
         machine: add {id} to {ALLOWED_VAR} (the Makefile's ALLOWED_SKIPS, with the reason) \
         if it is"
    );
}

#[cfg(test)]
mod tests {
    use super::is_allowed;

    #[test]
    fn an_id_is_allowed_only_when_listed_whole() {
        let list = "a::one, b::two\n  c::three";
        assert!(is_allowed(list, "a::one"));
        assert!(is_allowed(list, "b::two"));
        assert!(is_allowed(list, "c::three"));
        assert!(!is_allowed(list, "a::on"));
        assert!(!is_allowed(list, "a"));
        assert!(!is_allowed("", "a::one"));
        assert!(!is_allowed(list, ""));
    }
}
