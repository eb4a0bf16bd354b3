//! Client commands without a supervisor, with bad arguments, or naming an
//! unknown daemon.

use crate::harness::*;

#[test]
fn no_supervisor_running_is_a_clear_failure() {
    let sandbox = Sandbox::new();
    let config = sandbox.config("[process.a]\ncommand = \"x\"\n");
    let c = config.to_str().unwrap();
    // `logs` reads the log files instead (none yet).
    let logs = sandbox.run(&["logs", "a", "-c", c]);
    logs.expect_success();
    assert!(
        logs.stderr.contains("no supervisor is running"),
        "{}",
        logs.stderr
    );
    assert_eq!(logs.stdout, "");
    for args in [
        vec!["status", "-c", c],
        vec!["stop", "a", "-c", c],
        vec!["logs", "a", "-f", "-c", c],
        vec!["down", "-c", c],
    ] {
        let run = sandbox.run(&args);
        run.expect_code(1);
        assert!(
            run.stderr.contains("no tend supervisor is running"),
            "{}",
            run.stderr
        );
    }
    let socket = sandbox.path().join("nothing.sock");
    let run = sandbox.run(&["status", "--socket", socket.to_str().unwrap()]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("no tend supervisor is running"),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    let sandbox = Sandbox::new();
    for args in [
        vec!["frobnicate"],
        vec!["start"],
        vec!["status", "-c", "a.toml", "--socket", "/tmp/x.sock"],
        vec!["logs", "a", "-n", "many"],
    ] {
        sandbox.run(&args).expect_code(2);
    }
    // No ./tend.toml and no -c.
    let run = sandbox.run(&["status"]);
    run.expect_code(2);
    assert!(run.stderr.contains("tend.toml"), "{}", run.stderr);
}

#[test]
fn unknown_daemons_are_refused_by_name() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.a]\ncommand = \"{}\"\n",
        testd().display()
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    for args in [
        vec!["start", "zed", "-c", c],
        vec!["stop", "zed", "-c", c],
        vec!["restart", "zed", "-c", c],
        vec!["logs", "zed", "-c", c],
        vec!["status", "zed", "-c", c],
    ] {
        let run = sandbox.run(&args);
        run.expect_code(2);
        assert!(
            run.stderr.contains("no daemon named \"zed\""),
            "{}: {}",
            run.command,
            run.stderr
        );
    }
    // Through the socket path instead of the config.
    let socket = sandbox.state_dir().join("tend.sock");
    let run = sandbox.run(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
    run.expect_success();
    sandbox
        .run(&["down", "--socket", socket.to_str().unwrap()])
        .expect_success();
    assert!(up.wait().success());
}
