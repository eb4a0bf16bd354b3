//! `user`, `group`, `umask` and `[rlimits]` in the config file: a daemon
//! of `tend up` runs as `nobody` (when the tests run as root), and an
//! unknown user is reported with the file, line and key.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;

/// The value of `field` in `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_daemon_runs_as_the_user_umask_and_limits_of_the_config() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running a daemon as another user needs root");
        return;
    }
    let sandbox = Sandbox::new();
    // nobody may enter the sandbox (its working directory) and create its
    // socket in `n`.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sockets = sandbox.path().join("n");
    std::fs::create_dir(&sockets).unwrap();
    std::os::unix::fs::chown(&sockets, Some(65534), Some(65534)).unwrap();
    let config = sandbox.config(&format!(
        r#"[process.a]
command = "{testd}"
socket = "{socket}"
user = "nobody"
supplementary_groups = [4242]
umask = "027"

[process.a.rlimits]
nofile = {{ soft = 300, hard = 600 }}
"#,
        testd = testd().display(),
        socket = sockets.join("a.sock").display(),
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("a", "running")]);
    let pid = pid_of(process(&processes, "a"));
    let _daemon = Tracked::new(pid);
    assert_eq!(status_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups"), "4242 65534");
    assert_eq!(status_field(pid, "Umask"), "0027");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["300", "600"],
        "{files}"
    );
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success(), "{}", up.stderr());
}

#[test]
fn an_unknown_user_is_reported_with_its_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(
        r#"[process.a]
command = "a"
user = "no-such-user-tend"
umask = "9"
"#,
    );
    let run = sandbox.run(&["check", "-c", config.to_str().unwrap()]);
    assert!(!run.status.success());
    let file = config.display();
    for expected in [
        format!("{file}:6: process.a.user: no user named \"no-such-user-tend\""),
        format!("{file}:7: process.a.umask: must be octal digits"),
    ] {
        assert!(run.stderr.contains(&expected), "{expected}\n{}", run.stderr);
    }
}
