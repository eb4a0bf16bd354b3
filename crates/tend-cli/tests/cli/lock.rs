//! One `tend up` per state directory.

use crate::harness::*;

#[test]
fn a_second_up_on_the_same_state_directory_is_refused() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let body = format!(
        "[process.one]\ncommand = \"{}\"\nsocket = \"one.sock\"\n",
        testd.display()
    );
    let config = sandbox.config(&body);
    let c = config.to_str().unwrap();
    let first = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("one", "running")]);

    // Another file naming the same state directory is refused too.
    let other = sandbox.config_named(
        "other.toml",
        &format!("[settings]\nstate_dir = \"st\"\n\n{body}"),
    );
    for file in [&config, &other] {
        let second = sandbox.run(&["up", "-c", file.to_str().unwrap()]);
        second.expect_code(1);
        let expected = if file == &config {
            format!("tend up is already running for {}", config.display())
        } else {
            format!(
                "another tend up (pid {}) is already running for state directory {}, with config {}",
                first.pid(),
                sandbox.state_dir().display(),
                config.display()
            )
        };
        assert!(second.stderr.contains(&expected), "{}", second.stderr);
        assert!(
            second.stderr.contains(&format!("pid {}", first.pid())),
            "{}",
            second.stderr
        );
    }

    // The first one is undisturbed.
    let processes = status(&sandbox, &config).expect("the first tend up still answers");
    assert_eq!(process(&processes, "one")["state"], "running");
    sandbox.run(&["down", "-c", c]).expect_success();
}
