//! `tend reload` and SIGHUP: apply an edited config file without
//! touching what did not change.

use std::{path::Path, time::Instant};

use rustix::process::Signal;

use crate::harness::*;

fn c(config: &Path) -> &str {
    config.to_str().unwrap()
}

/// Daemons `name: args` as config tables.
fn tables(daemons: &[(&str, &str)]) -> String {
    let testd = testd();
    daemons
        .iter()
        .map(|(name, args)| {
            format!(
                "[process.{name}]\ncommand = \"{}\"\nargs = [{args}]\nsocket = \"{name}.sock\"\n\n",
                testd.display()
            )
        })
        .collect()
}

fn pid(sandbox: &Sandbox, config: &Path, name: &str) -> u32 {
    pid_of(process(&status(sandbox, config).unwrap(), name))
}

#[test]
fn reload_starts_new_stops_removed_restarts_changed_and_leaves_the_rest() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&tables(&[
        ("keep", ""),
        ("change", "\"--stdout\", \"v1\""),
        ("drop", ""),
    ]));
    let mut up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[
            ("keep", "running"),
            ("change", "running"),
            ("drop", "running"),
        ],
    );
    let keep = pid(&sandbox, &config, "keep");
    let change = pid(&sandbox, &config, "change");
    let dropped = Tracked::new(pid(&sandbox, &config, "drop"));

    sandbox.config(&tables(&[
        ("keep", ""),
        ("change", "\"--stdout\", \"v2\""),
        ("new", ""),
    ]));
    let run = sandbox.run(&["reload", "-c", c(&config)]);
    run.expect_success();
    for line in [
        "reload: started (new): new",
        "reload: stopped (removed from the file): drop",
        "reload: restarted (settings changed): change",
        "reload: 1 daemon unchanged",
    ] {
        assert!(
            run.stdout.contains(line),
            "{line:?} missing:\n{}",
            run.stdout
        );
    }
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("keep", "running"),
            ("change", "running"),
            ("new", "running"),
        ],
    );
    assert_eq!(
        pid_of(process(&processes, "keep")),
        keep,
        "unchanged: same pid"
    );
    assert_ne!(pid_of(process(&processes, "change")), change);
    assert!(
        processes.iter().all(|p| p["name"] != "drop"),
        "{processes:?}"
    );
    assert!(!dropped.alive());
    let logs = sandbox.run(&["logs", "change", "-c", c(&config)]);
    assert!(logs.stdout.contains("v2"), "{}", logs.stdout);

    // Nothing changed: nothing happens.
    let again = sandbox.run(&["reload", "-c", c(&config)]);
    again.expect_success();
    assert!(
        again.stdout.contains("reload: nothing changed"),
        "{}",
        again.stdout
    );
    assert_eq!(pid(&sandbox, &config, "keep"), keep);

    sandbox.run(&["down", "-c", c(&config)]).expect_success();
    assert!(up.wait().success());
}

#[test]
fn a_config_with_errors_is_refused_whole_and_the_running_set_is_kept() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&tables(&[("a", ""), ("b", "")]));
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running"), ("b", "running")]);
    let before = (pid(&sandbox, &config, "a"), pid(&sandbox, &config, "b"));

    // One good change (b's args) and one mistake: neither applies.
    sandbox.config(&format!(
        "{}[process.c]\ncommand = \"x\"\nstartup_timeout = \"soon\"\n",
        tables(&[("a", ""), ("b", "\"--stdout\", \"changed\"")])
    ));
    let run = sandbox.run(&["reload", "-c", c(&config)]);
    run.expect_code(2);
    assert!(run.stderr.contains("reload refused"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("tend.toml:16: process.c.startup_timeout"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("left as they are"), "{}", run.stderr);
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(processes.len(), 2, "{processes:?}");
    assert_eq!(
        (
            pid_of(process(&processes, "a")),
            pid_of(process(&processes, "b"))
        ),
        before
    );
    up.down(&sandbox, &config);
}

#[test]
fn sighup_reloads_instead_of_stopping() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&tables(&[("a", "")]));
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    let a = pid(&sandbox, &config, "a");
    sandbox.config(&tables(&[("a", ""), ("b", "")]));
    up.signal(Signal::HUP);
    wait_for_states(&sandbox, &config, &[("a", "running"), ("b", "running")]);
    assert_eq!(pid(&sandbox, &config, "a"), a);
    wait_until("the reload to be reported", Instant::now() + SOON, || {
        up.stdout().contains("tend: reload: started (new): b")
    });
    assert!(up.stdout().contains("SIGHUP received; reloading"));
    assert!(up.child.try_wait().unwrap().is_none(), "tend up still runs");
    up.down(&sandbox, &config);
}

#[test]
fn restart_after_the_file_changed_says_so() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&tables(&[("a", "\"--stdout\", \"old\"")]));
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    sandbox.config(&tables(&[("a", "\"--stdout\", \"new\"")]));
    let run = sandbox.run(&["restart", "a", "-c", c(&config)]);
    run.expect_success();
    assert!(
        run.stdout.contains("a: note: the settings of a in"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("run `tend reload` to apply the file"),
        "{}",
        run.stdout
    );
    let logs = sandbox.run(&["logs", "a", "-c", c(&config)]);
    assert!(
        !logs.stdout.contains("new"),
        "restarted with the loaded settings"
    );
    // Once reloaded, a restart has nothing to say.
    sandbox.run(&["reload", "-c", c(&config)]).expect_success();
    let run = sandbox.run(&["restart", "a", "-c", c(&config)]);
    run.expect_success();
    assert!(!run.stdout.contains("note"), "{}", run.stdout);
    up.down(&sandbox, &config);
}

#[test]
fn a_reload_that_fixes_a_failed_dependency_starts_its_dependents() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config_with = |db_args: &str| {
        sandbox.config(&format!(
            r#"
[process.db]
command = "{testd}"
args = [{db_args}]
socket = "db.sock"

[process.app]
command = "{testd}"
socket = "app.sock"
depends_on = ["db"]
"#,
            testd = testd.display()
        ))
    };
    let config = config_with("\"--exit-immediately\"");
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("db", "error"), ("app", "error")]);
    config_with("");
    let run = sandbox.run(&["reload", "-c", c(&config)]);
    run.expect_success();
    assert!(
        run.stdout
            .contains("reload: restarted (settings changed): db"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("reload: started again (a dependency had failed): app"),
        "{}",
        run.stdout
    );
    wait_for_states(&sandbox, &config, &[("db", "running"), ("app", "running")]);
    up.down(&sandbox, &config);
}

/// The marker lines of `a` in `tend logs a`, without the pids.
fn markers(sandbox: &Sandbox, config: &Path) -> Vec<String> {
    let logs = sandbox.run(&["logs", "a", "-c", c(config)]);
    logs.expect_success();
    logs.stdout
        .lines()
        .filter_map(|line| line.strip_prefix("--- "))
        .map(|marker| marker.split(", pid ").next().unwrap().to_owned())
        .collect()
}

#[test]
fn markers_say_restarted_after_tend_restart_and_a_reload_and_started_after_a_start() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&tables(&[("a", "\"--stdout\", \"v1\"")]));
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    let first = pid(&sandbox, &config, "a");

    sandbox
        .run(&["restart", "a", "-c", c(&config)])
        .expect_success();
    let second = pid(&sandbox, &config, "a");
    assert_ne!(first, second, "restart made a new incarnation");
    let logs = sandbox.run(&["logs", "a", "-c", c(&config)]);
    assert!(
        logs.stdout
            .contains(&format!("--- restarted, pid {second} ---")),
        "{}",
        logs.stdout
    );

    // A reload restarts a changed daemon: that is a restart too.
    sandbox.config(&tables(&[("a", "\"--stdout\", \"v2\"")]));
    sandbox.run(&["reload", "-c", c(&config)]).expect_success();
    wait_for_states(&sandbox, &config, &[("a", "running")]);

    // A stop and a start are a start.
    sandbox
        .run(&["stop", "a", "-c", c(&config)])
        .expect_success();
    sandbox
        .run(&["start", "a", "-c", c(&config)])
        .expect_success();
    assert_eq!(
        markers(&sandbox, &config),
        ["started", "restarted", "restarted", "started"]
    );
    up.down(&sandbox, &config);
}
