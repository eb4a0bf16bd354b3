//! `tend publish` reaches the daemons subscribed with `events`, in order.

use std::{path::Path, time::Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// Appends every line it receives to `$RECORD`.
const RECORDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/recorder.py"
);

/// The `params` of every `on_event` notification recorded in `path`.
fn received(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["method"] == "on_event")
        .map(|message| message["params"].clone())
        .collect()
}

#[test]
fn published_events_reach_subscribed_daemons_in_order() {
    let sandbox = Sandbox::new();
    let recorder = |name: &str, events: &str| {
        format!(
            r#"
[process.{name}]
command = "python3"
args = ['{RECORDER}']
socket = "{name}.sock"
env = {{ RECORD = "{record}" }}
events = {events}
startup_timeout = "20s"
"#,
            record = sandbox.path().join(format!("{name}.jsonl")).display(),
        )
    };
    let config = sandbox.config(
        &(recorder("ticks", r#"["tick"]"#) + &recorder("both", r#"["tick", "config-changed"]"#)),
    );
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("ticks", "running"), ("both", "running")],
    );

    const COUNT: usize = 20;
    for i in 0..COUNT {
        let run = sandbox.run(&["publish", "tick", &json!({"n": i}).to_string(), "-c", c]);
        run.expect_success();
        assert_eq!(run.stdout, "tick: queued for 2 daemons\n");
    }
    let changed = sandbox.run(&["publish", "config-changed", "-c", c]);
    changed.expect_success();
    assert_eq!(changed.stdout, "config-changed: queued for 1 daemon\n");
    let nobody = sandbox.run(&["publish", "unheard", "[1]", "-c", c]);
    nobody.expect_success();
    assert_eq!(nobody.stdout, "unheard: queued for 0 daemons\n");

    let ticks: Vec<Value> = (0..COUNT)
        .map(|i| json!({"event": "tick", "data": {"n": i}}))
        .collect();
    let mut both = ticks.clone();
    both.push(json!({"event": "config-changed", "data": null}));
    for (name, expected) in [("ticks", &ticks), ("both", &both)] {
        let record = sandbox.path().join(format!("{name}.jsonl"));
        let deadline = Instant::now() + SOON;
        wait_until(&format!("{name} to receive its events"), deadline, || {
            received(&record).len() >= expected.len()
        });
        assert_eq!(&received(&record), expected, "{name}");
    }

    // Data that is not JSON: exit 2, nothing published.
    let bad = sandbox.run(&["publish", "tick", "{n: 1}", "-c", c]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("DATA_JSON"), "{}", bad.stderr);
    sandbox.run(&["down", "-c", c]).expect_success();
}
