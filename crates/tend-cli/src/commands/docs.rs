//! `tend completions SHELL` and `tend man`: the shell completion script
//! and the man page, both generated from the command line's definition so
//! they cannot drift from it. Printed rather than installed at build time:
//! `cargo install` runs no install step, and a packager redirects the
//! output where their system wants it.

use std::io::Write;

use clap::CommandFactory;

use crate::{Cli, failure::CommandResult};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> CommandResult {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tend", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}

/// Prints the man page, `tend(1)`, as roff: the synopsis, every option
/// and command, and the examples, exit codes and environment of
/// `tend --help`.
pub fn man() -> CommandResult {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    std::io::stdout().lock().write_all(&page)?;
    Ok(())
}
