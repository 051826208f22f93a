//! One file per group of subcommands; [`run`] dispatches.
//!
//! * `check`: CRIU's self-check, version, features;
//! * `checkpoint`: dump, restore, stats, inspect;
//! * `crit`: decode, encode, show, info, x;
//! * `archive`: export and import of checkpoint archives;
//! * `registry`: push and pull of checkpoint images;
//! * `migrate`: send and receive;
//! * `docker` (feature `docker`): send and receive of a Docker container;
//! * `docs`: shell completions and the man page.

mod archive;
mod check;
mod checkpoint;
mod crit;
#[cfg(feature = "docker")]
pub(crate) mod docker;
mod docs;
mod migrate;
mod registry;

use crate::args::{Cli, Command};
use crate::error::CliResult;

/// Runs the command line's subcommand.
pub fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Check(a) => check::check(a.json),
        Command::Dump(a) => checkpoint::dump(&a),
        Command::Restore(a) => checkpoint::restore(&a),
        Command::Stats(a) => checkpoint::stats(&a),
        Command::Inspect(a) => checkpoint::inspect(&a),
        Command::Decode(a) => crit::decode(&a),
        Command::Encode(a) => crit::encode(&a),
        Command::Show(a) => crit::show(&a),
        Command::Info(a) => crit::info(&a),
        Command::X(a) => crit::explore(&a),
        Command::Export(a) => archive::export(&a),
        Command::Import(a) => archive::import(&a),
        Command::Push(a) => registry::push(&a),
        Command::Pull(a) => registry::pull(&a),
        #[cfg(feature = "docker")]
        Command::Send(a) if a.docker.docker.is_some() => {
            let d = a.docker.clone();
            docker::send(a, &d, d.docker.as_deref().unwrap_or_default())
        }
        #[cfg(feature = "docker")]
        Command::Receive(a) if a.docker.docker => {
            let d = a.docker.clone();
            docker::receive(a, &d)
        }
        Command::Send(a) => migrate::send(a),
        Command::Receive(a) => migrate::receive(a),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { out_dir } => docs::man(out_dir.as_deref()),
    }
}
