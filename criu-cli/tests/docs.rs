//! What `criu-rs` says about itself, as a user gets it from the binary:
//! `--help` and the man pages carry the examples and the exit codes, and
//! the completion scripts know every command and the CRIU flags. Runs the
//! built binary; needs no root.

mod common;

use std::process::Command;

use common::{bin, run};

/// The commands whose help has examples a user copies first.
const EXAMPLED: [&str; 6] = ["send", "receive", "dump", "restore", "push", "pull"];

/// Every exit code `error::Exit` has, and 0.
const CODES: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, 8];

fn stdout(args: &[&str]) -> String {
    let out = run(Command::new(bin()).args(args));
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The exit codes a text lists, one `  N  meaning` line each (roff
/// escapes no digit, so man pages read the same).
fn listed_codes(text: &str) -> Vec<u8> {
    let Some(at) = text.find("Exit codes:") else {
        return Vec::new();
    };
    text[at..]
        .lines()
        .skip(1)
        .map_while(|l| {
            let l = l.strip_prefix("  ")?;
            let (n, meaning) = l.split_once("  ")?;
            (!meaning.trim().is_empty()).then(|| n.parse().ok())?
        })
        .collect()
}

#[test]
fn help_lists_every_exit_code_and_each_command_an_example() {
    assert_eq!(listed_codes(&stdout(&["--help"])), CODES, "criu-rs --help");
    for cmd in EXAMPLED {
        let long = stdout(&["help", cmd]);
        assert_eq!(listed_codes(&long), CODES, "criu-rs help {cmd}");
        let example = format!("\n  criu-rs {cmd} ");
        assert!(long.contains(&example), "criu-rs help {cmd}: no example");
        let short = stdout(&[cmd, "-h"]);
        assert!(short.contains(&example), "criu-rs {cmd} -h: no example");
    }
}

#[test]
fn man_pages_generate_with_the_examples_and_the_exit_codes() {
    let page = stdout(&["man"]);
    assert!(page.contains("\n.TH criu-rs 1 "), "{page}");
    assert_eq!(listed_codes(&page), CODES, "criu-rs man");
    for cmd in EXAMPLED {
        // roff escapes '-' in the text it renders.
        let example = format!("\n  criu\\-rs {cmd} ");
        assert!(page.contains(&example), "criu-rs man: no {cmd} example");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    stdout(&["man", "--out-dir", out.to_str().unwrap()]);
    for cmd in EXAMPLED {
        let file = out.join(format!("criu-rs-{cmd}.1"));
        let page =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let title = format!("\n.TH criu-rs-{cmd} 1 ");
        assert!(page.contains(&title), "{page}");
        assert_eq!(listed_codes(&page), CODES, "{}", file.display());
        let example = format!("\n  criu\\-rs {cmd} ");
        assert!(page.contains(&example), "{}: no example", file.display());
    }
}

#[test]
fn completions_generate_for_each_shell_with_the_commands_and_criu_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&["completions", shell]);
        for word in EXAMPLED
            .iter()
            .chain(&["x", "encode", "completions", "man"])
        {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        for flag in [
            "tcp-established",
            "ext-mount-map",
            "auto-ext-mnt",
            "evasive-devices",
            "weak-sysctls",
        ] {
            assert!(script.contains(flag), "{shell}: no --{flag}");
        }
    }
    let bash = stdout(&["completions", "bash"]);
    assert!(
        bash.lines()
            .any(|l| l.trim_start().starts_with("complete -F ") && l.ends_with(" criu-rs")),
        "{bash}"
    );
}

#[test]
fn a_bad_command_line_exits_2_as_documented() {
    let wrong: [&[&str]; 3] = [
        &["dump"],
        &["no-such-command"],
        &["dump", "--pid", "one", "--images-dir", "/nonexistent"],
    ];
    for args in wrong {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "criu-rs {args:?}: {out:?}");
    }
}

#[test]
fn a_file_that_cannot_be_read_exits_1_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("core-1.img");
    for cmd in ["info", "show"] {
        let out = Command::new(bin()).arg(cmd).arg(&missing).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "criu-rs {cmd}: {out:?}");
    }
}
