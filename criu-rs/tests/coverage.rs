//! Every setter and adder of libcriu's `criu_local_*` API that the
//! installed headers declare must be wrapped by this crate, so that a new
//! libcriu cannot silently leave a gap.

use std::collections::BTreeSet;
use std::path::Path;

/// Names of `criu_local_set_*`, `criu_local_add_*` and
/// `criu_local_join_ns_add` functions declared in the generated bindings.
fn setters_in_bindings() -> BTreeSet<String> {
    let path = env!("CRIU_RS_BINDINGS");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn "))
        .filter_map(|l| l.split('(').next())
        .filter(|n| {
            n.starts_with("criu_local_set_")
                || n.starts_with("criu_local_add_")
                || *n == "criu_local_join_ns_add"
        })
        .map(str::to_string)
        .collect()
}

/// Identifiers used in the crate's sources (module folders included).
fn identifiers_in_sources() -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                words.insert(w.to_string());
            }
        }
    }
    words
}

#[test]
fn every_local_setter_and_adder_is_wrapped() {
    let setters = setters_in_bindings();
    assert!(
        setters.len() > 50,
        "suspiciously few setters found: {setters:?}"
    );
    // Sanity: the check would notice a missing one.
    assert!(setters.contains("criu_local_set_leave_running"));
    let used = identifiers_in_sources();
    let missing: Vec<&String> = setters.iter().filter(|s| !used.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "libcriu setters not wrapped by criu-rs: {missing:?}"
    );
}
