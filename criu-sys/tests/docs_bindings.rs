//! The bindings docs.rs documents (`src/docs/bindings.rs`, used when
//! `DOCS_RS` is set) must be what the installed headers generate, when the
//! installed CRIU is the version they state; otherwise they would document
//! an API the crate does not have.

mod skip;

const DOCS: &str = include_str!("../src/docs/bindings.rs");

/// The CRIU version named in the documentation copy's first line.
fn docs_version() -> &'static str {
    DOCS.lines()
        .next()
        .and_then(|l| l.split("headers of CRIU ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the first line of src/docs/bindings.rs names the CRIU version")
}

/// The documentation copy without its two-line header.
fn docs_body() -> String {
    DOCS.lines().skip(3).collect::<Vec<_>>().join("\n")
}

#[test]
fn docs_bindings_match_the_installed_headers_of_the_same_version() {
    let installed = env!("CRIU_SYS_HEADER_VERSION");
    let stated = docs_version();
    if installed != stated {
        skip::skip(
            "criu-sys::docs_bindings_match_the_installed_headers_of_the_same_version",
            &format!(
                "the installed CRIU is {installed}, the docs bindings are of {stated}; \
                 run scripts/update-docs-bindings.sh after upgrading"
            ),
        );
        return;
    }
    let generated = std::fs::read_to_string(env!("CRIU_SYS_BINDINGS")).expect("generated bindings");
    let generated = generated.lines().collect::<Vec<_>>().join("\n");
    assert!(
        generated == docs_body(),
        "src/docs/bindings.rs differs from what CRIU {installed}'s headers generate: \
         run scripts/update-docs-bindings.sh"
    );
}
