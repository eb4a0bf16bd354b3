//! `kill -9` of `tend up`: its daemons die with it (parent-death signal),
//! and the next `tend up` cleans up whatever survived.

use std::time::Instant;

use rustix::process::Signal;

use crate::harness::*;

#[test]
fn daemons_die_with_a_killed_supervisor_and_the_next_up_cleans_survivors() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.plain]
command = "{testd}"
socket = "plain.sock"

[process.forker]
command = "{testd}"
args = ["--fork-children", "2"]
socket = "forker.sock"

[process.stubborn]
command = "{testd}"
args = ["--ignore-sigterm"]
shutdown_grace_period = "300ms"
"#,
        testd = testd.display(),
    ));
    let c = config.to_str().unwrap();
    let mut first = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("plain", "running"),
            ("forker", "running"),
            ("stubborn", "running"),
        ],
    );
    let plain = Tracked::new(pid_of(process(&processes, "plain")));
    let forker = Tracked::new(pid_of(process(&processes, "forker")));
    let stubborn = Tracked::new(pid_of(process(&processes, "stubborn")));
    let deadline = Instant::now() + SOON;
    let mut children = Vec::new();
    wait_until("the forker's children", deadline, || {
        children = pids_in(&sandbox.run(&["logs", "forker", "-c", c]).stdout, "child ");
        children.len() == 2
    });
    let children: Vec<Tracked> = children.into_iter().map(Tracked::new).collect();

    first.signal(Signal::KILL);
    first.wait();
    // The daemon leaders get SIGTERM from the kernel when tend dies.
    let deadline = Instant::now() + SOON;
    wait_until("the daemons to die with tend up", deadline, || {
        !plain.alive() && !forker.alive()
    });

    // What survived (children of a group, a daemon ignoring SIGTERM) is
    // stopped by the next tend up before it starts its own daemons.
    let mut second = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("plain", "running"),
            ("forker", "running"),
            ("stubborn", "running"),
        ],
    );
    assert!(
        !stubborn.alive(),
        "the stubborn daemon survived the next tend up"
    );
    for child in &children {
        assert!(
            !child.alive(),
            "child {} survived the next tend up",
            child.pid
        );
    }
    let out = second.stdout();
    assert!(out.contains("left running by an earlier tend"), "{out}");
    assert_ne!(pid_of(process(&processes, "stubborn")), stubborn.pid);

    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(second.wait().success());
}

/// `kill -9` of `tend up`: each daemon gets its configured stop signal,
/// not SIGTERM — from the kernel (its parent-death signal) and from the
/// guard, which alone reaches a daemon that lost its parent-death signal
/// (as one that changes its uid does).
#[test]
fn daemons_of_a_killed_supervisor_get_their_configured_stop_signal() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let record = |name: &str| sandbox.path().join(format!("{name}.signal"));
    let config = sandbox.config(&format!(
        r#"
[process.nginx]
command = "{testd}"
args = ["--record-signal", "{nginx}"]
socket = "nginx.sock"
stop_signal = "SIGQUIT"

[process.python]
command = "{testd}"
args = ["--record-signal", "{python}", "--no-parent-death-signal"]
socket = "python.sock"
stop_signal = "SIGINT"

[process.plain]
command = "{testd}"
args = ["--record-signal", "{plain}", "--no-parent-death-signal"]
socket = "plain.sock"
"#,
        testd = testd.display(),
        nginx = record("nginx").display(),
        python = record("python").display(),
        plain = record("plain").display(),
    ));
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("nginx", "running"),
            ("python", "running"),
            ("plain", "running"),
        ],
    );
    let daemons: Vec<(&str, Tracked)> = ["nginx", "python", "plain"]
        .into_iter()
        .map(|name| (name, Tracked::new(pid_of(process(&processes, name)))))
        .collect();

    up.signal(Signal::KILL);
    up.wait();
    let deadline = Instant::now() + SOON;
    wait_until("the daemons to die with tend up", deadline, || {
        daemons.iter().all(|(_, daemon)| !daemon.alive())
    });
    let recorded: Vec<String> = daemons
        .iter()
        .map(|(name, _)| std::fs::read_to_string(record(name)).unwrap_or_default())
        .collect();
    assert_eq!(recorded, ["SIGQUIT\n", "SIGINT\n", "SIGTERM\n"]);
}
