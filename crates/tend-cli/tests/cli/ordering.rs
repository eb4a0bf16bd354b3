//! `depends_on`, `autostart`, `tend up NAME...`, restart policies, stop
//! signals, `env_file` and `${VAR}`, through the real binary.

use std::{fs, path::Path, time::Instant};

use crate::harness::*;

/// The index of the first line of `text` containing every one of `parts`.
#[track_caller]
fn line_index(text: &str, parts: &[&str]) -> usize {
    text.lines()
        .position(|line| parts.iter().all(|part| line.contains(part)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{text}"))
}

fn c(config: &Path) -> &str {
    config.to_str().unwrap()
}

#[test]
fn dependents_start_after_their_conditions_hold_and_stop_before_their_dependencies() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.app]
command = "{testd}"
socket = "app.sock"
depends_on = {{ db = "healthy", migrate = "completed" }}

[process.migrate]
command = "{testd}"
args = ["--never-bind", "--exit-after", "200", "--exit-code", "0"]
restart = "never"
depends_on = ["db"]

[process.db]
command = "{testd}"
args = ["--bind-delay", "200"]
socket = "db.sock"
healthcheck = {{ interval = "100ms", timeout = "2s" }}
"#,
        testd = testd.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("app", "running"),
            ("db", "running"),
            ("migrate", "stopped"),
        ],
    );
    assert_eq!(process(&processes, "migrate")["completed"], true);
    assert_eq!(process(&processes, "db")["passed_health_check"], true);
    let out = up.stdout();
    let db_healthy = line_index(&out, &["db", "running -> running", "healthy"]);
    let migrate_started = line_index(&out, &["migrate", "stopped -> starting"]);
    let migrate_done = line_index(&out, &["migrate", "running -> stopped", "completed"]);
    let app_started = line_index(&out, &["app", "stopped -> starting"]);
    assert!(
        line_index(&out, &["db", "starting -> running"]) < migrate_started,
        "{out}"
    );
    assert!(
        db_healthy < app_started,
        "app waited for db to be healthy:\n{out}"
    );
    assert!(
        migrate_done < app_started,
        "app waited for migrate to complete:\n{out}"
    );

    sandbox.run(&["down", "-c", c(&config)]).expect_success();
    assert!(up.wait().success());
    let out = up.stdout();
    let app_stopped = line_index(&out, &["app", "stopping -> stopped"]);
    let db_stopping = line_index(&out, &["db", "running -> stopping"]);
    assert!(app_stopped < db_stopping, "app stopped before db:\n{out}");
}

#[test]
fn a_failed_dependency_leaves_its_dependents_unstarted_with_the_reason() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let app_starts = sandbox.path().join("app.starts");
    let config = sandbox.config(&format!(
        r#"
[process.db]
command = "{testd}"
args = ["--stderr", "no disk", "--exit-immediately"]
socket = "db.sock"

[process.app]
command = "{testd}"
args = ["--record-start", "{app_starts}"]
socket = "app.sock"
depends_on = ["db"]

[process.other]
command = "{testd}"
socket = "other.sock"
"#,
        testd = testd.display(),
        app_starts = app_starts.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("db", "error"), ("app", "error"), ("other", "running")],
    );
    let reason = process(&processes, "app")["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.starts_with("waiting for db, which failed: "),
        "{reason}"
    );
    assert!(reason.contains("no disk"), "{reason}");
    assert!(!app_starts.exists(), "app was never spawned");
    let err = up.stderr();
    assert!(
        err.contains("app did not start: waiting for db, which failed"),
        "{err}"
    );

    // `tend start app` respects the same rule.
    let run = sandbox.run(&["start", "app", "-c", c(&config)]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("waiting for db, which failed"),
        "{}",
        run.stderr
    );
    // And so does `tend restart app`.
    let run = sandbox.run(&["restart", "app", "-c", c(&config)]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("waiting for db, which failed"),
        "{}",
        run.stderr
    );
    assert!(!app_starts.exists());
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(process(&processes, "app")["state"], "error");
    up.down(&sandbox, &config);
}

#[test]
fn a_dependency_that_restarts_within_its_budget_is_waited_for() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let db_starts = sandbox.path().join("db.starts");
    let config = sandbox.config(&format!(
        r#"
[process.db]
command = "{testd}"
args = ["--record-start", "{db_starts}", "--fail-starts", "2"]
socket = "db.sock"
retry_first_start = true
restart_delay = "50ms"

[process.app]
command = "{testd}"
socket = "app.sock"
depends_on = ["db"]
"#,
        testd = testd.display(),
        db_starts = db_starts.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("db", "running"), ("app", "running")]);
    assert_eq!(process(&processes, "db")["restart_attempts"], 2);
    assert_eq!(fs::read_to_string(&db_starts).unwrap().lines().count(), 3);
    up.down(&sandbox, &config);
}

#[test]
fn up_with_names_runs_those_and_their_dependencies_and_autostart_false_waits_to_be_asked() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.base]
command = "{testd}"
socket = "base.sock"
autostart = false

[process.web]
command = "{testd}"
socket = "web.sock"
depends_on = {{ base = "ready" }}

[process.extra]
command = "{testd}"
socket = "extra.sock"

[process.tool]
command = "{testd}"
socket = "tool.sock"
autostart = false
"#,
        testd = testd.display()
    ));
    let mut up = sandbox.up_with(&config, &["web"], &[]);
    wait_for_states(
        &sandbox,
        &config,
        &[("base", "running"), ("web", "running")],
    );
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(process(&processes, "extra")["state"], "stopped");
    assert_eq!(process(&processes, "tool")["state"], "stopped");
    assert!(
        up.stdout().contains("starting 2 of them"),
        "{}",
        up.stdout()
    );
    up.down(&sandbox, &config);

    // Without names: autostart daemons and what they need (base, though
    // autostart = false, because web depends on it); not tool.
    let mut up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[
            ("base", "running"),
            ("web", "running"),
            ("extra", "running"),
        ],
    );
    assert_eq!(
        process(&status(&sandbox, &config).unwrap(), "tool")["state"],
        "stopped"
    );
    sandbox
        .run(&["start", "tool", "-c", c(&config)])
        .expect_success();
    wait_for_states(&sandbox, &config, &[("tool", "running")]);
    up.down(&sandbox, &config);

    let run = sandbox.run(&["up", "-c", c(&config), "nosuch"]);
    run.expect_code(2)
        .expect_stderr("no daemon named \"nosuch\"");
    assert!(
        run.stderr.contains("base, web, extra, tool"),
        "{}",
        run.stderr
    );
}

#[test]
fn stop_of_a_dependency_stops_its_dependents_first_and_start_brings_them_back() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.db]
command = "{testd}"
socket = "db.sock"

[process.app]
command = "{testd}"
socket = "app.sock"
depends_on = ["db"]
"#,
        testd = testd.display()
    ));
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("db", "running"), ("app", "running")]);
    let run = sandbox.run(&["stop", "db", "-c", c(&config)]);
    run.expect_success();
    assert!(
        run.stdout
            .contains("also stopped, first, what depends on db: app"),
        "{}",
        run.stdout
    );
    wait_for_states(&sandbox, &config, &[("db", "stopped"), ("app", "stopped")]);
    let out = up.stdout();
    assert!(
        line_index(&out, &["app", "stopping -> stopped"])
            < line_index(&out, &["db", "running -> stopping"]),
        "{out}"
    );

    // Starting the dependent starts what it depends on.
    sandbox
        .run(&["start", "app", "-c", c(&config)])
        .expect_success();
    wait_for_states(&sandbox, &config, &[("db", "running"), ("app", "running")]);
    // And restarting it waits for db again, which is running: no change there.
    let db_pid = pid_of(process(&status(&sandbox, &config).unwrap(), "db"));
    sandbox
        .run(&["restart", "app", "-c", c(&config)])
        .expect_success();
    let processes = wait_for_states(&sandbox, &config, &[("app", "running")]);
    assert_eq!(pid_of(process(&processes, "db")), db_pid);
    up.down(&sandbox, &config);
}

#[test]
fn dependency_mistakes_are_config_errors_with_file_and_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(
        r#"
[process.a]
command = "true"
depends_on = ["b"]

[process.b]
command = "true"
depends_on = { a = "completed", ghost = "ready" }
"#,
    );
    let run = sandbox.run(&["check", "-c", c(&config)]);
    run.expect_code(2);
    let file = config.display().to_string();
    // The settings header takes four lines.
    assert!(
        run.stderr.contains(&format!(
            "{file}:11: process.b.depends_on: \"completed\" waits for a one-shot task"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "{file}:11: process.b.depends_on: no daemon named \"ghost\""
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "{file}:7: process.a.depends_on: dependency cycle: a -> b -> a"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn restart_policies_and_one_shot_tasks_show_in_status() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.once]
command = "{testd}"
args = ["--never-bind", "--exit-after", "100", "--exit-code", "3"]
restart = "never"

[process.task]
command = "{testd}"
args = ["--never-bind", "--exit-after", "100", "--exit-code", "0"]
restart = "on-failure"
"#,
        testd = testd.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("once", "error"), ("task", "stopped")]);
    let once = process(&processes, "once");
    assert!(
        once["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3; restart = never"),
        "{once}"
    );
    assert_eq!(once["restart_attempts"], 0);
    let task = process(&processes, "task");
    assert_eq!(task["completed"], true);
    assert_eq!(task["last_exit"], "exited with code 0");
    up.down(&sandbox, &config);
}

#[test]
fn the_stop_signal_is_sent_and_the_grace_period_still_ends_in_sigkill() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let record = sandbox.path().join("signal");
    let config = sandbox.config(&format!(
        r#"
[process.py]
command = "{testd}"
args = ["--record-signal", "{record}"]
socket = "py.sock"
stop_signal = "SIGINT"

[process.deaf]
command = "{testd}"
socket = "deaf.sock"
stop_signal = "WINCH"
shutdown_grace_period = "300ms"
"#,
        testd = testd.display(),
        record = record.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("py", "running"), ("deaf", "running")]);
    let deaf = Tracked::new(pid_of(process(&processes, "deaf")));
    sandbox
        .run(&["stop", "py", "-c", c(&config)])
        .expect_success();
    assert_eq!(fs::read_to_string(&record).unwrap(), "SIGINT\n");
    let began = Instant::now();
    sandbox
        .run(&["stop", "deaf", "-c", c(&config)])
        .expect_success();
    assert!(!deaf.alive());
    assert!(began.elapsed() >= std::time::Duration::from_millis(300));
    up.down(&sandbox, &config);

    let bad = sandbox.config_named(
        "bad.toml",
        "[process.a]\ncommand = \"true\"\nstop_signal = \"SIGKILL\"\n",
    );
    let run = sandbox.run(&["check", "-c", c(&bad)]);
    run.expect_code(2)
        .expect_stderr("bad.toml:3: process.a.stop_signal: must be SIGTERM, SIGINT");
}

#[test]
fn env_files_and_variables_from_the_environment_of_tend_up() {
    let sandbox = Sandbox::new();
    let testd = testd();
    fs::write(
        sandbox.path().join("app.env"),
        "FROM_FILE=\"file value\"\nOVERRIDDEN=file\n",
    )
    .unwrap();
    let config = sandbox.config(&format!(
        r#"
[process.app]
command = "{testd}"
args = ["--stdout", "greeting=${{GREETING}}", "--stdout", "default=${{UNSET_IN_TEST:-fallback}}", "--print-env", "FROM_FILE", "--print-env", "OVERRIDDEN", "--print-env", "PORT"]
socket = "${{SOCK_NAME}}.sock"
env_file = "app.env"
env = {{ OVERRIDDEN = "table", PORT = "${{TEST_PORT}}" }}
"#,
        testd = testd.display()
    ));
    let env = [
        ("GREETING", "hello"),
        ("SOCK_NAME", "app"),
        ("TEST_PORT", "8080"),
    ];
    let mut up = sandbox.up_with(&config, &[], &env);
    wait_until("app to run", Instant::now() + SOON, || {
        assert!(up.child.try_wait().unwrap().is_none(), "{}", up.stderr());
        status(&sandbox, &config).is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == "app" && p["state"] == "running")
        })
    });
    assert!(sandbox.state_dir().join("app.sock").exists());
    let logs = sandbox.run(&["logs", "app", "-c", c(&config)]);
    logs.expect_success();
    for line in [
        "greeting=hello",
        "default=fallback",
        "env FROM_FILE=file value",
        "env OVERRIDDEN=table",
        "env PORT=8080",
    ] {
        assert!(
            logs.stdout.contains(line),
            "{line:?} missing:\n{}",
            logs.stdout
        );
    }
    up.down(&sandbox, &config);

    // Without the variables: refused with the line, naming the variable.
    let run = sandbox.run(&["check", "-c", c(&config)]);
    run.expect_code(2).expect_stderr(
        "tend.toml:7: process.app.args[1]: environment variable GREETING is not set",
    );
}

#[test]
fn a_stop_while_a_dependent_waits_calls_its_start_off() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let app_starts = sandbox.path().join("app.starts");
    let config = sandbox.config(&format!(
        r#"
[process.db]
command = "{testd}"
args = ["--bind-delay", "2000"]
socket = "db.sock"

[process.app]
command = "{testd}"
args = ["--record-start", "{app_starts}"]
socket = "app.sock"
depends_on = ["db"]
"#,
        testd = testd.display(),
        app_starts = app_starts.display()
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("app", "starting"), ("db", "starting")],
    );
    assert_eq!(process(&processes, "app")["last_error"], "waiting for db");
    sandbox
        .run(&["stop", "app", "-c", c(&config)])
        .expect_success();
    wait_for_states(&sandbox, &config, &[("db", "running")]);
    wait_until(
        "tend up to report app's start called off",
        Instant::now() + SOON,
        || {
            up.stderr()
                .contains("app did not start: app was stopped while it waited for its dependencies")
        },
    );
    assert_eq!(
        process(&status(&sandbox, &config).unwrap(), "app")["state"],
        "stopped"
    );
    assert!(!app_starts.exists(), "app was never spawned");
    up.down(&sandbox, &config);
}
