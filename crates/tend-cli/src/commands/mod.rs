//! One module per `tend` command.

pub mod call;
pub mod check;
pub mod docs;
pub mod down;
pub mod logs;
pub mod publish;
pub mod restart;
pub mod start;
pub mod status;
pub mod stop;
pub mod top;
pub mod up;

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::{
    SupervisorArgs,
    client::ControlClient,
    config::{self, ConfigError, DEFAULT_CONFIG_FILE},
    failure::Failure,
    protocol::{ProcessStatus, Request},
};

/// The control socket a client command talks to: `--socket`, or the one in
/// the state directory of `-c FILE` (default `./tend.toml`).
fn control_socket(target: &SupervisorArgs) -> Result<PathBuf, Failure> {
    if let Some(socket) = &target.socket {
        if target.config.is_some() {
            return Err(Failure::usage(anyhow!(
                "-c FILE and --socket PATH both name the supervisor: pass one of them"
            )));
        }
        return Ok(socket.clone());
    }
    let file = target
        .config
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
    match config::load_state_dir(file) {
        Ok(state_dir) => Ok(state_dir.control_socket()),
        Err(ConfigError::Unreadable { source, .. })
            if target.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(Failure::usage(anyhow!(
                "no {DEFAULT_CONFIG_FILE} in the current directory; pass -c FILE or --socket PATH"
            )))
        }
        Err(e) => Err(Failure::usage(e)),
    }
}

/// Connects to the supervisor `target` names.
async fn connect(target: &SupervisorArgs) -> Result<ControlClient, Failure> {
    let socket = control_socket(target)?;
    Ok(ControlClient::connect(&socket).await?)
}

/// Runs `start`, `stop` or `restart` of `name` and reports the daemon's
/// state afterwards, or why the operation failed.
async fn operate(target: &SupervisorArgs, request: Request, name: &str) -> Result<(), Failure> {
    let mut client = connect(target).await?;
    let response = client.call(&request).await?;
    if !response.ok {
        let reason = response.error.unwrap_or_else(|| "no reason given".into());
        return Err(anyhow!("{name}: {reason}").into());
    }
    match response.process {
        Some(process) => println!("{name}: {}", describe(&process)),
        None => println!("{name}: done"),
    }
    Ok(())
}

/// "running, pid 1234" / "stopped".
fn describe(process: &ProcessStatus) -> String {
    match process.pid {
        Some(pid) => format!("{}, pid {pid}", process.state.as_str()),
        None => process.state.as_str().to_owned(),
    }
}
