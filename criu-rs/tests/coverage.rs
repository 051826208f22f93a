//! Every setter and adder of libcriu's `criu_local_*` API that the
//! installed headers declare must be *called* by this crate, so that a new
//! libcriu cannot silently leave a gap. Calls are found in the crate's
//! syntax tree (`syn`), so a name in a comment, a doc string or a string
//! literal does not count.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Names of `criu_local_set_*`, `criu_local_add_*` and
/// `criu_local_join_ns_add` functions declared in the generated bindings.
fn setters_in_bindings() -> BTreeSet<String> {
    let path = env!("CRIU_RS_BINDINGS");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("pub fn "))
        .filter_map(|l| l.split('(').next())
        .filter(|n| is_setter(n))
        .map(str::to_string)
        .collect()
}

fn is_setter(name: &str) -> bool {
    name.starts_with("criu_local_set_")
        || name.starts_with("criu_local_add_")
        || name == "criu_local_join_ns_add"
}

/// Collects the setters a piece of Rust code calls: the last segment of
/// the callee path of every call expression, and (since a `macro_rules!`
/// invocation's input is not parsed as expressions) every setter-named
/// identifier token passed to a macro (as in `leave_running =>
/// criu_local_set_leave_running`, which the macro turns into a call).
#[derive(Default)]
struct Calls(BTreeSet<String>);

impl<'ast> Visit<'ast> for Calls {
    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let syn::Expr::Path(p) = &*call.func {
            if let Some(last) = p.path.segments.last() {
                let name = last.ident.to_string();
                if is_setter(&name) {
                    self.0.insert(name);
                }
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Not inside `macro_rules!` definitions: only invocations say which
        // names are used.
        if !mac.path.is_ident("macro_rules") {
            self.tokens(mac.tokens.clone());
        }
        syn::visit::visit_macro(self, mac);
    }
}

impl Calls {
    fn tokens(&mut self, ts: TokenStream) {
        for t in ts {
            match t {
                TokenTree::Ident(i) if is_setter(&i.to_string()) => {
                    self.0.insert(i.to_string());
                }
                TokenTree::Group(g) => self.tokens(g.stream()),
                _ => {}
            }
        }
    }

    fn of_source(text: &str) -> BTreeSet<String> {
        let file = syn::parse_file(text).expect("the crate's sources parse");
        let mut calls = Calls::default();
        calls.visit_file(&file);
        calls.0
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Setters called anywhere in `src/` (every module, folders included).
fn setters_called() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 5, "found the crate's sources: {files:?}");
    files
        .iter()
        .flat_map(|f| Calls::of_source(&std::fs::read_to_string(f).unwrap()))
        .collect()
}

#[test]
fn the_scanner_counts_calls_not_comments_or_strings() {
    let src = r#"
        // criu_local_set_in_a_comment(p);
        /// criu_local_set_in_a_doc_comment
        fn f() {
            let _ = "criu_local_set_in_a_string";
            unsafe { sys::criu_local_set_really_called(p, 1) };
            let g = criu_local_set_named_not_called;
            list! { flag => criu_local_set_via_a_macro }
        }
        macro_rules! m { () => { criu_local_set_in_a_macro_definition() } }
    "#;
    let found: Vec<String> = Calls::of_source(src).into_iter().collect();
    assert_eq!(
        found,
        ["criu_local_set_really_called", "criu_local_set_via_a_macro"]
    );
}

#[test]
fn every_local_setter_and_adder_is_called() {
    let setters = setters_in_bindings();
    assert!(
        setters.len() > 50,
        "suspiciously few setters found: {setters:?}"
    );
    assert!(setters.contains("criu_local_set_leave_running"));
    let called = setters_called();
    let missing: Vec<&String> = setters.iter().filter(|s| !called.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "libcriu setters declared but never called by criu-rs: {missing:?}"
    );
}
