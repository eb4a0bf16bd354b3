//! Bad config files: each gives exit 2 and a message naming the file, the
//! line and the key; all problems of a file are reported at once.

use crate::harness::*;

/// `(what, body after [settings], text on the offending line, key)`.
/// A key of `""` is a syntax error, which names the line only.
const BAD_FILES: &[(&str, &str, &str, &str)] = &[
    (
        "unknown top-level table",
        "[servers.a]\ncommand = \"x\"\n[process.a]\ncommand = \"x\"\n",
        "[servers.a]",
        "servers",
    ),
    (
        "unknown settings key",
        "colour = \"blue\"\n[process.a]\ncommand = \"x\"\n",
        "colour",
        "settings.colour",
    ),
    (
        "state_dir of the wrong type",
        "[process.a]\ncommand = \"x\"\n",
        "",
        "settings.state_dir",
    ),
    (
        "misspelt process key",
        "[process.a]\ncommand = \"x\"\ncomand = \"y\"\n",
        "comand",
        "process.a.comand",
    ),
    (
        "missing command",
        "[process.a]\nargs = [\"1\"]\n",
        "[process.a]",
        "process.a.command",
    ),
    (
        "command not a string",
        "[process.a]\ncommand = 5\n",
        "command",
        "process.a.command",
    ),
    (
        "empty command",
        "[process.a]\ncommand = \"\"\n",
        "command",
        "process.a.command",
    ),
    (
        "args not an array",
        "[process.a]\ncommand = \"x\"\nargs = \"-v\"\n",
        "args",
        "process.a.args",
    ),
    (
        "args element not a string",
        "[process.a]\ncommand = \"x\"\nargs = [\"-v\", 3]\n",
        "args",
        "process.a.args[1]",
    ),
    (
        "env value not a string",
        "[process.a]\ncommand = \"x\"\nenv = { PORT = 8080 }\n",
        "env",
        "process.a.env.PORT",
    ),
    (
        "env not a table",
        "[process.a]\ncommand = \"x\"\nenv = \"A=1\"\n",
        "env",
        "process.a.env",
    ),
    (
        "duration without unit",
        "[process.a]\ncommand = \"x\"\nstartup_timeout = \"5\"\n",
        "startup_timeout",
        "process.a.startup_timeout",
    ),
    (
        "duration with unknown unit",
        "[process.a]\ncommand = \"x\"\nshutdown_grace_period = \"5 sec\"\n",
        "shutdown_grace_period",
        "process.a.shutdown_grace_period",
    ),
    (
        "negative duration",
        "[process.a]\ncommand = \"x\"\nrestart_delay = -5\n",
        "restart_delay",
        "process.a.restart_delay",
    ),
    (
        "zero startup timeout",
        "[process.a]\ncommand = \"x\"\nstartup_timeout = \"0s\"\n",
        "startup_timeout",
        "process.a.startup_timeout",
    ),
    (
        "negative restart attempts",
        "[process.a]\ncommand = \"x\"\nmax_restart_attempts = -1\n",
        "max_restart_attempts",
        "process.a.max_restart_attempts",
    ),
    (
        "restart attempts as a string",
        "[process.a]\ncommand = \"x\"\nmax_restart_attempts = \"3\"\n",
        "max_restart_attempts",
        "process.a.max_restart_attempts",
    ),
    (
        "unknown healthcheck key",
        "[process.a]\ncommand = \"x\"\nsocket = \"a.sock\"\n[process.a.healthcheck]\nperiod = \"1s\"\n",
        "period",
        "process.a.healthcheck.period",
    ),
    (
        "zero healthcheck retries",
        "[process.a]\ncommand = \"x\"\nsocket = \"a.sock\"\n[process.a.healthcheck]\nretries = 0\n",
        "retries",
        "process.a.healthcheck.retries",
    ),
    (
        "healthcheck not a table",
        "[process.a]\ncommand = \"x\"\nsocket = \"a.sock\"\nhealthcheck = true\n",
        "healthcheck",
        "process.a.healthcheck",
    ),
    (
        "healthcheck without a socket",
        "[process.a]\ncommand = \"x\"\n[process.a.healthcheck]\ninterval = \"1s\"\n",
        "[process.a.healthcheck]",
        "process.a.healthcheck",
    ),
    (
        "unknown health probe",
        "[process.a]\ncommand = \"x\"\nsocket = \"a.sock\"\n[process.a.healthcheck]\nprobe = \"smtp\"\n",
        "probe",
        "process.a.healthcheck.probe",
    ),
    (
        "http probe without a url",
        "[process.a]\ncommand = \"x\"\n[process.a.healthcheck]\nprobe = \"http\"\n",
        "probe",
        "process.a.healthcheck.probe",
    ),
    (
        "notify watchdog without notify readiness",
        "[process.a]\ncommand = \"x\"\nready = { tcp = \"127.0.0.1:80\" }\nwatchdog = \"1s\"\n",
        "watchdog",
        "process.a.watchdog",
    ),
    (
        "empty event name",
        "[process.a]\ncommand = \"x\"\nsocket = \"a.sock\"\nevents = [\"tick\", \"\"]\n",
        "events",
        "process.a.events[1]",
    ),
    (
        "events without a socket",
        "[process.a]\ncommand = \"x\"\nevents = [\"tick\"]\n",
        "events",
        "process.a.events",
    ),
    (
        "missing requirements file",
        "[process.a]\n[process.a.python]\nrequirements = \"requirements.txt\"\n",
        "requirements",
        "process.a.python.requirements",
    ),
    (
        "unknown python key",
        "[process.a]\npython = { requirement = \"r.txt\" }\n",
        "python",
        "process.a.python.requirement",
    ),
    (
        "missing package.json",
        "[process.a]\nnode = {}\n",
        "node",
        "process.a.node.package",
    ),
    (
        "socket path too long",
        "[process.a]\ncommand = \"x\"\nsocket = \"/tmp/sssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss.sock\"\n",
        "socket",
        "process.a.socket",
    ),
    (
        "socket shared by two daemons",
        "[process.a]\ncommand = \"x\"\nsocket = \"s.sock\"\n[process.b]\ncommand = \"x\"\nsocket = \"./s.sock\"\n",
        "./s.sock",
        "process.b.socket",
    ),
    (
        "missing working directory",
        "[process.a]\ncommand = \"x\"\ncwd = \"no/such/dir\"\n",
        "cwd",
        "process.a.cwd",
    ),
    (
        "invalid daemon name",
        "[process.\"my plugin\"]\ncommand = \"x\"\n",
        "my plugin",
        "process.my plugin",
    ),
    (
        "daemon not a table",
        "[process]\necho = \"python3 echo.py\"\n",
        "echo",
        "process.echo",
    ),
    ("no daemon at all", "", "", "process"),
    (
        "TOML syntax error",
        "[process.a]\ncommand = \"x\nargs = []\n",
        "command",
        "",
    ),
];

/// The 1-based line of the first line of `text` where `needle` starts a
/// match, or `None` for an empty needle.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"));
    Some(text[..offset].matches('\n').count() + 1)
}

#[test]
fn each_bad_file_exits_2_naming_file_line_and_key() {
    assert!(BAD_FILES.len() >= 15);
    let sandbox = Sandbox::new();
    let mut failures = Vec::new();
    for (index, &(what, body, needle, key)) in BAD_FILES.iter().enumerate() {
        let settings = if what == "state_dir of the wrong type" {
            "[settings]\nstate_dir = 7\n"
        } else {
            "[settings]\nstate_dir = \"st\"\n"
        };
        let text = format!("{settings}{body}");
        let file = sandbox.config_named(&format!("bad{index}.toml"), &text);
        let run = sandbox.run(&["check", "-c", file.to_str().unwrap()]);
        let needle = if what == "state_dir of the wrong type" {
            "state_dir"
        } else {
            needle
        };
        let place = match line_of(&text, needle) {
            Some(line) => format!("{}:{line}: {key}", file.display()),
            None => format!("{}: {key}", file.display()),
        };
        let place = if key.is_empty() {
            format!(
                "{}:{}: invalid TOML",
                file.display(),
                line_of(&text, needle).unwrap()
            )
        } else {
            place
        };
        if run.status.code() != Some(2) || !run.stderr.contains(&place) {
            failures.push(format!(
                "{what}: exit {:?}, expected 2 and {place:?} in:\n{}",
                run.status.code(),
                run.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let sandbox = Sandbox::new();
    let file = sandbox.config(
        "[process.a]\ncommand = 1\nstartup_timeout = \"soon\"\n\n[process.b]\ncommand = \"x\"\nlog = \"b.log\"\n",
    );
    let run = sandbox.run(&["check", "-c", file.to_str().unwrap()]);
    run.expect_code(2);
    for expected in [
        "3 problems in",
        ":5: process.a.command: must be a string, found an integer",
        ":6: process.a.startup_timeout: invalid duration \"soon\"",
        ":10: process.b.log: unknown key",
    ] {
        assert!(
            run.stderr.contains(expected),
            "{expected:?} missing from:\n{}",
            run.stderr
        );
    }
}

#[test]
fn up_refuses_a_bad_file_and_starts_nothing() {
    let sandbox = Sandbox::new();
    let file = sandbox.config(&format!(
        "[process.a]\ncommand = \"{}\"\nsocket = \"a.sock\"\n[process.b]\ncommand = \"x\"\nrestart_delay = \"fast\"\n",
        testd().display()
    ));
    let run = sandbox.run(&["up", "-c", file.to_str().unwrap()]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("process.b.restart_delay"),
        "{}",
        run.stderr
    );
    assert!(sandbox.marked_processes().is_empty());
}

#[test]
fn a_missing_file_is_a_config_error() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["check", "-c", "nope.toml"]);
    run.expect_code(2);
    assert!(run.stderr.contains("nope.toml"), "{}", run.stderr);
    let run = sandbox.run(&["up"]);
    run.expect_code(2);
    assert!(run.stderr.contains("tend.toml"), "{}", run.stderr);
}

#[test]
fn check_accepts_the_demo_config() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tend.toml");
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["check", "-c", demo.to_str().unwrap()]);
    run.expect_success();
    assert!(run.stdout.contains("is valid: 2 daemons"), "{}", run.stdout);
}
