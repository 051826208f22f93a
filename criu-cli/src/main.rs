//! `criu-rs`: one command to checkpoint and restore Linux processes with
//! CRIU, look inside checkpoints as CRIU's `crit` does (and write them back),
//! pack them as archives and OCI images, and move a live process tree to
//! another machine over mutual TLS.
//!
//! Every subcommand is a file of [`commands`]; the CRIU options that dump,
//! restore, send and receive share are [`criu_flags::CriuFlags`]; errors
//! carry their exit code and a hint ([`error::CliError`]).

mod args;
mod commands;
mod crit;
mod criu_flags;
mod error;
mod output;
mod preflight;
mod progress;
mod signals;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` ends quietly, as for any CLI.
    // SAFETY: restoring the default disposition of a signal, before any
    // thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = args::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.print();
            e.exit_code()
        }
    }
}
