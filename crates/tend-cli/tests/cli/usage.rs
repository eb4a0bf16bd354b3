//! Containment, CPU time and memory in `tend status`, and resource limits
//! that cannot be applied.

use crate::harness::*;

/// `[settings] containment` chooses the containment; `tend up` says which
/// one is in force, and `tend status` shows it with each daemon's CPU time
/// and memory (table and JSON). A limit the containment cannot enforce
/// leaves its daemon in `error` with the reason, while the others run.
#[test]
fn containment_usage_and_a_refused_limit() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config_named(
        "tend.toml",
        &format!(
            r#"[settings]
state_dir = "st"
containment = "process-group"

[process.worker]
command = "{testd}"
socket = "worker.sock"

[process.capped]
command = "{testd}"
socket = "capped.sock"
memory_max = "64M"
"#,
            testd = testd.display()
        ),
    );
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("worker", "running"), ("capped", "error")],
    );

    let worker = process(&processes, "worker");
    assert_eq!(worker["containment"], "process-group", "{worker}");
    assert!(worker["usage"]["cpu_us"].is_u64(), "{worker}");
    assert!(
        worker["usage"]["memory_bytes"].as_u64().unwrap() > 0,
        "{worker}"
    );
    let capped = process(&processes, "capped");
    assert_eq!(capped["pid"], serde_json::Value::Null, "{capped}");
    assert_eq!(capped["usage"], serde_json::Value::Null, "{capped}");
    let error = capped["last_error"].as_str().unwrap();
    assert!(
        error.contains("memory_max needs cgroup containment"),
        "{error}"
    );

    let table = sandbox.run(&["status", "-c", c]);
    table.expect_success();
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["NAME", "STATE", "PID", "UPTIME", "CPU", "MEM"],
        "{}",
        table.stdout
    );
    let worker_row = lines.iter().find(|l| l.starts_with("worker ")).unwrap();
    assert!(
        worker_row.contains(" MiB ") || worker_row.contains(" KiB "),
        "{worker_row}"
    );
    let capped_row = lines.iter().find(|l| l.starts_with("capped ")).unwrap();
    assert!(capped_row.contains("memory_max needs"), "{capped_row}");
    assert_eq!(
        lines.last(),
        Some(&"containment: process-group"),
        "{}",
        table.stdout
    );

    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success(), "{}", up.stderr());
    assert!(
        up.stdout().contains("tend: containment: process-group\n"),
        "{}",
        up.stdout()
    );
    assert!(
        up.stdout()
            .contains("starting -> error (cannot start \"capped\": memory_max needs"),
        "{}",
        up.stdout()
    );
}

/// Limits with a unit or without; nonsense is reported with file, line
/// and key by `tend check`.
#[test]
fn limit_values_are_checked_with_their_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(
        r#"[process.a]
command = "a"
memory_max = "1.5 furlongs"
pids_max = 0
cpu_max = 0
"#,
    );
    let run = sandbox.run(&["check", "-c", config.to_str().unwrap()]);
    assert!(!run.status.success());
    let file = config.display();
    for expected in [
        format!("{file}:6: process.a.memory_max: size \"1.5 furlongs\" has an unknown unit"),
        format!("{file}:7: process.a.pids_max: must be at least 1"),
        format!("{file}:8: process.a.cpu_max: must be a number of CPUs"),
    ] {
        assert!(run.stderr.contains(&expected), "{expected}\n{}", run.stderr);
    }
}
