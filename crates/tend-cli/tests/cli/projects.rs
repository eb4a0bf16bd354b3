//! Two projects, two supervisors: a config without `state_dir` gets a
//! state directory keyed by its path, and a client never acts on the
//! supervisor of another config.

use std::fs;

use crate::harness::*;

/// `DIR/tend.toml` with one testd daemon `NAME` and no state directory.
fn project(sandbox: &Sandbox, dir: &str, name: &str) -> std::path::PathBuf {
    let folder = sandbox.path().join(dir);
    fs::create_dir_all(&folder).unwrap();
    let file = folder.join("tend.toml");
    fs::write(
        &file,
        format!(
            "[process.{name}]\ncommand = \"{}\"\nsocket = \"{name}.sock\"\n",
            testd().display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn two_projects_get_two_supervisors() {
    let sandbox = Sandbox::new();
    let a = project(&sandbox, "a", "alpha");
    let b = project(&sandbox, "b", "beta");
    let _up_a = sandbox.up(&a);
    let _up_b = sandbox.up(&b);
    wait_for_states(&sandbox, &a, &[("alpha", "running")]);
    wait_for_states(&sandbox, &b, &[("beta", "running")]);

    // Each project's status shows its own daemons only, from its folder
    // (the default ./tend.toml) as from elsewhere with -c.
    let status_b = sandbox.run_in(&sandbox.path().join("b"), &["status"]);
    status_b.expect_success();
    assert!(status_b.stdout.contains("beta"), "{}", status_b.stdout);
    assert!(!status_b.stdout.contains("alpha"), "{}", status_b.stdout);

    // `down` in b stops b's supervisor, and a runs on.
    sandbox
        .run_in(&sandbox.path().join("b"), &["down"])
        .expect_success();
    let after = status(&sandbox, &a).expect("a's supervisor still answers");
    assert_eq!(process(&after, "alpha")["state"], "running");
    assert!(status(&sandbox, &b).is_none(), "b's supervisor is gone");
    sandbox
        .run(&["down", "-c", a.to_str().unwrap()])
        .expect_success();
}

#[test]
fn a_shared_state_directory_is_refused_naming_the_other_config() {
    let sandbox = Sandbox::new();
    let body = format!(
        "[settings]\nstate_dir = \"../st\"\n\n[process.one]\ncommand = \"{}\"\nsocket = \"one.sock\"\n",
        testd().display()
    );
    for dir in ["a", "b"] {
        fs::create_dir_all(sandbox.path().join(dir)).unwrap();
    }
    let a = sandbox.config_named("a/tend.toml", &body);
    let b = sandbox.config_named("b/tend.toml", &body);
    let up = sandbox.up(&a);
    wait_for_states(&sandbox, &a, &[("one", "running")]);

    let second = sandbox.run(&["up", "-c", b.to_str().unwrap()]);
    second.expect_code(1);
    for part in [
        format!("pid {}", up.pid()),
        format!("with config {}", a.display()),
        "state_dir".to_owned(),
    ] {
        assert!(second.stderr.contains(&part), "{part}: {}", second.stderr);
    }

    // A client of b reaches a's supervisor and refuses to act on it.
    for args in [vec!["status"], vec!["stop", "one"], vec!["down"]] {
        let mut args = args;
        args.extend(["-c", b.to_str().unwrap()]);
        let refused = sandbox.run(&args);
        refused.expect_code(1);
        assert!(
            refused
                .stderr
                .contains(&format!("runs {}, not {}", a.display(), b.display())),
            "{}",
            refused.stderr
        );
    }
    let processes = status(&sandbox, &a).expect("a's supervisor still answers");
    assert_eq!(process(&processes, "one")["state"], "running");
    sandbox
        .run(&["down", "-c", a.to_str().unwrap()])
        .expect_success();
}
