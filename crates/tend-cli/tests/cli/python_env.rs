//! `[process.NAME.python]`: `tend up` builds the daemon's virtualenv from
//! its requirements and runs it with the venv's interpreter; a failed
//! install marks that daemon failed while the others run. No network: the
//! requirement is a wheel the test builds with the standard library,
//! installed with `--no-index`.

use std::time::{Duration, Instant};

use crate::harness::*;

#[path = "../../../testd/fixtures/wheel.rs"]
mod wheel;
use wheel::{build_wheel, python_venv_available};

/// Creating a venv (ensurepip) takes seconds; this only catches hangs.
const ENV_DEADLINE: Duration = Duration::from_secs(300);

/// Prints its interpreter and the installed package's version, then
/// serves its socket.
const DAEMON: &str = r#"
import os, socket, sys
import tendclipkg
print("executable", sys.executable, flush=True)
print("package", tendclipkg.VERSION, flush=True)
server = socket.socket(socket.AF_UNIX)
server.bind(os.environ["SOCKET_PATH"])
server.listen(8)
while True:
    server.accept()[0].close()
"#;

/// `<sandbox>/plugin` with `daemon.py`, a wheel of `tendclipkg` 0.1 in
/// `wheels/`, and `requirements.txt` naming it.
fn plugin(sandbox: &Sandbox) -> std::path::PathBuf {
    let plugin = sandbox.path().join("plugin");
    std::fs::create_dir_all(plugin.join("wheels")).unwrap();
    let wheel = build_wheel(&plugin.join("wheels"), "tendclipkg", "0.1");
    std::fs::write(plugin.join("daemon.py"), DAEMON).unwrap();
    // pip reads options from requirements files: no index, local wheels.
    std::fs::write(
        plugin.join("requirements.txt"),
        format!("--no-index\n./wheels/{wheel}\n"),
    )
    .unwrap();
    plugin
}

#[test]
fn up_builds_the_venv_and_runs_the_daemon_with_its_interpreter() {
    if !python_venv_available() {
        return;
    }
    let sandbox = Sandbox::new();
    let plugin = plugin(&sandbox);
    std::fs::write(
        plugin.join("broken.txt"),
        "--no-index\n./wheels/tendclipkg-9.9-py3-none-any.whl\n",
    )
    .unwrap();
    let config = sandbox.config(&format!(
        r#"
[process.py]
command = "python3"
args = ["daemon.py"]
cwd = "plugin"
socket = "py.sock"

[process.py.python]
requirements = "requirements.txt"

[process.broken]
args = ["daemon.py"]
cwd = "plugin"
socket = "broken.sock"

[process.broken.python]
requirements = "broken.txt"

[process.plain]
command = "{testd}"
socket = "plain.sock"
"#,
        testd = testd().display()
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    let deadline = Instant::now() + ENV_DEADLINE;
    let processes = wait_for_states_until(
        &sandbox,
        &config,
        &[("py", "running"), ("broken", "error"), ("plain", "running")],
        deadline,
    );

    // The daemon runs with the venv's interpreter, which has the package.
    let venv_python = sandbox.state_dir().join("envs/py/venv/bin/python");
    let logs = sandbox.run(&["logs", "py", "-c", c]);
    logs.expect_success();
    assert!(
        logs.stdout
            .contains(&format!("executable {}\n", venv_python.display())),
        "{}",
        logs.stdout
    );
    assert!(logs.stdout.contains("package 0.1\n"), "{}", logs.stdout);
    let out = up.stdout();
    assert!(
        out.contains("tend: preparing python environment for py…"),
        "{out}"
    );
    assert!(
        out.contains("tend: python environment for py installed"),
        "{out}"
    );

    // The broken install is reported like a failed start, with pip's
    // complaint, in `status` too.
    let broken = process(&processes, "broken");
    assert_eq!(broken["pid"], serde_json::Value::Null);
    let reason = broken["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot prepare the python environment of \"broken\""),
        "{broken}"
    );
    assert!(reason.contains("tendclipkg-9.9"), "{reason}");
    assert!(
        up.stderr().contains("tend: broken did not start"),
        "{}",
        up.stderr()
    );
    // It is not started later with the system's python either.
    let start = sandbox.run(&["start", "broken", "-c", c]);
    start.expect_code(1);
    assert!(
        start
            .stderr
            .contains("cannot prepare the python environment"),
        "{}",
        start.stderr
    );
    let after = status(&sandbox, &config).unwrap();
    assert_eq!(process(&after, "broken")["state"], "error");
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success(), "{}", up.stderr());

    // The next `tend up` reuses the environment; a restart runs the
    // daemon with the venv's interpreter again.
    std::fs::remove_file(plugin.join("broken.txt")).unwrap();
    let config = sandbox.config(
        r#"
[process.py]
args = ["daemon.py"]
cwd = "plugin"
socket = "py.sock"

[process.py.python]
requirements = "requirements.txt"
"#,
    );
    let up = sandbox.up(&config);
    let first = wait_for_states(&sandbox, &config, &[("py", "running")]);
    sandbox.run(&["restart", "py", "-c", c]).expect_success();
    let second = status(&sandbox, &config).unwrap();
    assert_ne!(pid_of(&first[0]), pid_of(&second[0]));
    let logs = sandbox.run(&["logs", "py", "-c", c]);
    let executables: Vec<&str> = logs
        .stdout
        .lines()
        .filter(|line| line.starts_with("executable "))
        .collect();
    let expected = format!("executable {}", venv_python.display());
    assert_eq!(executables, [expected.as_str(); 2], "{}", logs.stdout);
    let out = up.stdout();
    assert!(
        out.contains("tend: python environment for py is up to date"),
        "{out}"
    );
    assert!(!out.contains("installing"), "{out}");
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn environments_of_daemons_up_does_not_start_are_prepared_at_their_first_start() {
    if !python_venv_available() {
        return;
    }
    let sandbox = Sandbox::new();
    plugin(&sandbox);
    let config = sandbox.config(&format!(
        r#"
[process.py]
args = ["daemon.py"]
cwd = "plugin"
socket = "py.sock"

[process.py.python]
requirements = "requirements.txt"

[process.idle]
args = ["daemon.py"]
cwd = "plugin"
socket = "idle.sock"

[process.idle.python]
requirements = "requirements.txt"

[process.plain]
command = "{testd}"
socket = "plain.sock"
"#,
        testd = testd().display()
    ));
    let c = config.to_str().unwrap();
    let envs = sandbox.state_dir().join("envs");

    // Only `plain` is asked for: no environment is made.
    let mut up = sandbox.up_with(&config, &["plain"], &[]);
    wait_for_states(
        &sandbox,
        &config,
        &[("plain", "running"), ("py", "stopped"), ("idle", "stopped")],
    );
    assert!(!envs.join("py").exists() && !envs.join("idle").exists());
    assert!(!up.stdout().contains("preparing"), "{}", up.stdout());

    // Its first start prepares `py`'s, and runs it with the venv's
    // interpreter; `idle`'s is still not made.
    let start = sandbox.run_until(&["start", "py", "-c", c], ENV_DEADLINE);
    start.expect_success();
    let venv_python = envs.join("py/venv/bin/python");
    let logs = sandbox.run(&["logs", "py", "-c", c]);
    assert!(
        logs.stdout
            .contains(&format!("executable {}\n", venv_python.display())),
        "{}",
        logs.stdout
    );
    assert!(logs.stdout.contains("package 0.1\n"), "{}", logs.stdout);
    assert!(!envs.join("idle").exists());

    // Changed while stopped, then reloaded: the next start prepares the
    // environment from the new settings, not the ones it was made from.
    sandbox.run(&["stop", "py", "-c", c]).expect_success();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            r#"args = ["daemon.py"]"#,
            r#"args = ["daemon.py", "second"]"#,
            1,
        ),
    )
    .unwrap();
    sandbox.run(&["reload", "-c", c]).expect_success();
    let start = sandbox.run_until(&["start", "py", "-c", c], ENV_DEADLINE);
    start.expect_success();
    let running = status(&sandbox, &config).unwrap();
    let pid = pid_of(process(&running, "py"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(
        argv[..3],
        [
            venv_python.as_os_str().as_encoded_bytes(),
            b"daemon.py".as_slice(),
            b"second".as_slice()
        ],
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    up.down(&sandbox, &config);
}
