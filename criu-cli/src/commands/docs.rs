//! `completions` and `man`: generated from the clap definition.

use std::path::Path;

use crate::args::command;
use crate::error::{CliError, CliResult};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> CliResult {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "criu-rs", &mut std::io::stdout());
    Ok(())
}

/// Prints the man page, or writes one per command into `out_dir`.
pub fn man(out_dir: Option<&Path>) -> CliResult {
    let cmd = command();
    match out_dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::io("rendering the man page", e))?;
            crate::output::write_output(None, &out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::io(format!("creating {}", dir.display()), e))?;
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| CliError::io(format!("writing man pages into {}", dir.display()), e))
        }
    }
}
