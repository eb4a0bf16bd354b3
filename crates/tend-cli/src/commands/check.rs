//! `tend check [-c FILE]`: validate a config without starting anything.

use std::path::Path;

use crate::{
    config,
    failure::{CommandResult, Failure},
};

/// Runs the command.
pub fn run(file: &Path) -> CommandResult {
    let config = config::load(file).map_err(Failure::usage)?;
    let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
    let count = names.len();
    println!(
        "{} is valid: {count} daemon{} ({}); state directory {}",
        config.file.display(),
        if count == 1 { "" } else { "s" },
        names.join(", "),
        config.state_dir.path().display()
    );
    Ok(())
}
