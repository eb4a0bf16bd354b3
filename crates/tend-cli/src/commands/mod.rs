//! One module per `tend` command.

pub mod call;
pub mod check;
pub mod docs;
pub mod down;
pub mod logs;
pub mod publish;
pub mod reload;
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
    protocol::{ErrorKind, ProcessStatus, Request, Response},
    sanitize::{Layout, escape_controls},
};

/// The failure a refused request means: a usage error (exit 2) when it
/// named a daemon the config does not have, else a failed operation
/// (exit 1). `what` prefixes the reason (the daemon, the event).
fn refused(response: Response, what: Option<&str>) -> Failure {
    let reason = response.error.unwrap_or_else(|| "no reason given".into());
    if response.error_kind == Some(ErrorKind::UnknownDaemon) {
        return Failure::usage(anyhow!(reason));
    }
    match what {
        Some(what) => anyhow!("{what}: {reason}").into(),
        None => anyhow!(reason).into(),
    }
}

/// The supervisor a client command talks to.
pub struct Target {
    /// Its control socket.
    socket: PathBuf,
    /// The config file (canonical) it must run; `None` with `--socket`.
    config: Option<PathBuf>,
}

/// The control socket a client command talks to: `--socket`, or the one in
/// the state directory of `-c FILE` (default `./tend.toml`).
pub fn control_socket(target: &SupervisorArgs) -> Result<Target, Failure> {
    if let Some(socket) = &target.socket {
        if target.config.is_some() {
            return Err(Failure::usage(anyhow!(
                "-c FILE and --socket PATH both name the supervisor: pass one of them"
            )));
        }
        return Ok(Target {
            socket: socket.clone(),
            config: None,
        });
    }
    let file = target
        .config
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
    match config::load_state_dir(file) {
        Ok((file, state_dir)) => Ok(Target {
            socket: state_dir.control_socket(),
            config: Some(file),
        }),
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

/// Connects to the supervisor `target` names. Reached through a config
/// file, the supervisor must run that file: two configs may name one state
/// directory, and a client of one must not stop or restart the daemons of
/// the other (`--socket` talks to whoever listens there).
async fn connect(target: &SupervisorArgs) -> Result<ControlClient, Failure> {
    let target = control_socket(target)?;
    let client = ControlClient::connect(&target.socket).await?;
    verify(client, &target).await
}

/// `client`, once its supervisor is known to run the config of `target`
/// (see [`connect`]).
async fn verify(mut client: ControlClient, target: &Target) -> Result<ControlClient, Failure> {
    if let Some(config) = &target.config {
        let response = client.call(&Request::Info).await?;
        let other = response
            .supervisor
            .filter(|supervisor| &supervisor.config_file != config);
        if let Some(supervisor) = other {
            return Err(anyhow!(
                "the supervisor on {} (pid {}) runs {}, not {}: both configs use state \
                     directory {}; pass `-c {2}` to talk to it, or give each config its own \
                     `[settings] state_dir`",
                target.socket.display(),
                supervisor.pid,
                supervisor.config_file.display(),
                config.display(),
                supervisor.state_dir.display()
            )
            .into());
        }
    }
    Ok(client)
}

/// Runs `start`, `stop` or `restart` of `name` and reports the daemon's
/// state afterwards, or why the operation failed.
async fn operate(target: &SupervisorArgs, request: Request, name: &str) -> Result<(), Failure> {
    let mut client = connect(target).await?;
    let response = client.call(&request).await?;
    if !response.ok {
        return Err(refused(response, Some(name)));
    }
    match response.process {
        Some(process) => println!("{name}: {}", describe(&process)),
        None => println!("{name}: done"),
    }
    for note in &response.notes {
        println!("{name}: note: {}", escape_controls(note, Layout::Lines));
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
