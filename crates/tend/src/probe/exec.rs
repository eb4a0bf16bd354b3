//! Exec probes: a command run in the daemon's environment and working
//! directory, without a shell, in a process group of its own, passing when
//! it exits 0 within the timeout. One that overruns is killed with its
//! whole group (while its leader is unreaped, so the group is certainly
//! still the one it leads). Callers await each run, so a daemon never has
//! more than one in flight.

use std::{process::Stdio, time::Duration};

use crate::{
    children::ChildTable,
    config::{BackgroundProcessConfig, ExecProbe},
};

/// Runs `probe` for the daemon of `config` within `timeout`.
pub(crate) async fn check(
    probe: &ExecProbe,
    config: &BackgroundProcessConfig,
    children: &ChildTable,
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = probe.command.split_first() else {
        return Err("the exec probe names no program".into());
    };
    let shown = program.to_string_lossy();
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(socket) = &config.socket_path {
        command.env("SOCKET_PATH", socket);
    }
    if let Some(dir) = &config.plugin_path {
        command.current_dir(dir);
    }
    let child = children
        .spawn_registered(&mut command)
        .map_err(|e| format!("cannot run {shown:?}: {e}"))?;
    let mut run = Run {
        pid: child.id(),
        child,
        children,
        finished: false,
    };
    let result = match tokio::time::timeout(timeout, run.child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{shown:?} {}", describe(status))),
        Ok(Err(e)) => Err(format!("cannot wait for {shown:?}: {e}")),
        Err(_) => {
            run.kill_group();
            let _ = run.child.wait().await;
            Err(format!(
                "{shown:?} did not finish within {timeout:?} (killed)"
            ))
        }
    };
    run.finished = true;
    result
}

/// A probe command under way. Dropped unfinished (the check was cancelled:
/// the daemon is stopping), it kills the command's group; either way it
/// takes the command out of the child table.
struct Run<'a> {
    child: tokio::process::Child,
    pid: Option<u32>,
    children: &'a ChildTable,
    /// Reaped, so its PID may name another process now.
    finished: bool,
}

impl Run<'_> {
    /// SIGKILL to the command's process group, while its leader is unreaped
    /// (so the group is certainly the one it leads).
    fn kill_group(&self) {
        if let Some(pid) = self
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Not waited for: unreaped, its group still its own. tokio reaps
            // the killed leader in the background.
            self.kill_group();
        }
        if let Some(pid) = self.pid {
            self.children.forget(pid);
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".into(),
    }
}
