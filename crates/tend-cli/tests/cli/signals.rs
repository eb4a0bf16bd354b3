//! SIGTERM (and SIGINT) to `tend up` stop every daemon — their forked
//! children and double-forked descendants included — before it exits.

use rustix::process::Signal;

use crate::harness::*;

fn stops_everything_on(signal: Signal) {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.forker]
command = "{testd}"
args = ["--fork-children", "2", "--double-fork"]
socket = "forker.sock"

[process.stubborn]
command = "{testd}"
args = ["--ignore-sigterm"]
shutdown_grace_period = "300ms"

[process.plain]
command = "{testd}"
socket = "plain.sock"
"#,
        testd = testd.display(),
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("forker", "running"),
            ("stubborn", "running"),
            ("plain", "running"),
        ],
    );
    let mut everything: Vec<Tracked> = processes.iter().map(|p| Tracked::new(pid_of(p))).collect();
    // The forker's children and its escaped grandchild, from its output.
    let deadline = std::time::Instant::now() + SOON;
    let mut descendants = Vec::new();
    wait_until(
        "the forker's children and escaped grandchild",
        deadline,
        || {
            let logs = sandbox.run(&["logs", "forker", "-c", c]).stdout;
            descendants = pids_in(&logs, "child ");
            descendants.extend(pids_in(&logs, "escaped "));
            descendants.len() == 3
        },
    );
    everything.extend(descendants.iter().map(|&pid| Tracked::new(pid)));
    assert!(everything.iter().all(Tracked::alive));
    let contained_by_cgroup = in_tend_cgroup(everything[0].pid);

    up.signal(signal);
    let status = up.wait();
    // Checked right after it exited: nothing may be left, not even briefly.
    let survivors: Vec<u32> = everything
        .iter()
        .filter(|p| p.alive())
        .map(|p| p.pid)
        .collect();
    assert!(
        survivors.is_empty(),
        "alive after tend up exited: {survivors:?}\n{}",
        up.stdout()
    );
    assert!(status.success(), "{status:?}\n{}", up.stderr());
    // With cgroup containment the escapee is stopped with its daemon's
    // cgroup; with process groups the subreaper finds it and says so.
    let out = up.stdout();
    assert!(
        contained_by_cgroup || out.contains("escaped their daemon's process group"),
        "{out}"
    );
}

#[test]
fn sigterm_stops_every_daemon_before_exit() {
    stops_everything_on(Signal::TERM);
}

#[test]
fn sigint_stops_every_daemon_before_exit() {
    stops_everything_on(Signal::INT);
}
