//! Checks of the crate's layout that CI runs with the unit tests: no
//! import circle among the modules of `migrate/`, and every module of
//! `lib.rs` and `migrate/` named in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The modules a file declares (`mod x;`, `pub mod x;`...), but those
/// compiled for tests only.
fn declared_modules(file: &Path) -> Vec<String> {
    let text = read(file);
    let mut out = Vec::new();
    let mut test_only = false;
    for line in text.lines().map(str::trim) {
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .or_else(|| line.strip_prefix("mod "));
        match decl.and_then(|d| d.strip_suffix(';')) {
            Some(name) if !test_only => out.push(name.to_string()),
            _ => {}
        }
        test_only = line == "#[cfg(test)]";
    }
    out
}

/// The modules of `migrate/` that `text` names through `prefix` (`super::`
/// or `crate::migrate::`), braces included.
fn named_after(text: &str, prefix: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(prefix) {
        let rest = &text[i + prefix.len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(inner) => inner.split('}').next().unwrap_or("").split(',').collect(),
            None => vec![rest],
        };
        for n in names {
            let n: String = n
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if known.contains(&n) {
                out.insert(n);
            }
        }
    }
    out
}

/// `text` without its comment lines: a doc link names a module without
/// importing it, so it makes no edge of the import graph.
fn code_only(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which module of `migrate/` uses which (`strategy/` counts as one).
fn migrate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = src().join("migrate");
    let known: BTreeSet<String> = declared_modules(&dir.join("mod.rs")).into_iter().collect();
    let mut graph = BTreeMap::new();
    for m in &known {
        // Inside strategy/, `super::` of mod.rs is migrate, of the others
        // strategy itself.
        let files: Vec<(PathBuf, bool)> = match dir.join(m).is_dir() {
            true => {
                let mut files: Vec<(PathBuf, bool)> = std::fs::read_dir(dir.join(m))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .map(|p| {
                        let is_mod = p.file_name().is_some_and(|n| n == "mod.rs");
                        (p, is_mod)
                    })
                    .collect();
                files.sort();
                files
            }
            false => vec![(dir.join(format!("{m}.rs")), true)],
        };
        let mut uses = BTreeSet::new();
        for (file, super_is_migrate) in files {
            let text = code_only(&read(&file));
            uses.extend(named_after(&text, "crate::migrate::", &known));
            uses.extend(named_after(&text, "super::super::", &known));
            if super_is_migrate {
                uses.extend(named_after(&text, "super::", &known));
            }
        }
        uses.remove(m);
        graph.insert(m.clone(), uses);
    }
    graph
}

/// A circle in `graph`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut c = path[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn migrate_has_no_import_circle() {
    let graph = migrate_graph();
    assert!(graph["steps"].contains("dumping"), "the parser sees uses");
    assert_eq!(circle(&graph), None, "{graph:#?}");
}

#[test]
fn the_parser_finds_a_circle_when_there_is_one() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(circle(&g).is_some());
}

#[test]
fn doc_links_are_not_imports() {
    let known = BTreeSet::from(["strategy".to_string()]);
    let text = "/// See [the docs](crate::migrate::strategy).\nfn f() {}";
    assert!(named_after(&code_only(text), "crate::migrate::", &known).is_empty());
    assert!(!named_after(text, "crate::migrate::", &known).is_empty());
}

#[test]
fn architecture_md_names_every_module() {
    let doc = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"));
    let mut missing = Vec::new();
    for file in [src().join("lib.rs"), src().join("migrate/mod.rs")] {
        for m in declared_modules(&file) {
            if !doc.contains(&format!("`{m}`")) && !doc.contains(&format!("`{m}/`")) {
                missing.push(format!("{m} (declared in {})", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules (as `name` or `name/`): {missing:?}"
    );
}
