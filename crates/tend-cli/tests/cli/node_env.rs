//! `[process.NAME.node]`: `tend up` installs the daemon's packages and
//! gives it `NODE_PATH`. No network: the dependency is a local `file:`
//! package.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::harness::*;

/// npm takes seconds; this only catches hangs.
const ENV_DEADLINE: Duration = Duration::from_secs(300);

fn npm_available() -> bool {
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let ok = runs("npm") && runs("node");
    if !ok {
        eprintln!("skipped: npm or node is not installed");
    }
    ok
}

/// Prints `NODE_PATH` and what its dependency exports, then serves its
/// socket.
const DAEMON: &str = r#"
const net = require("net");
console.log("node_path " + process.env.NODE_PATH);
console.log("localdep " + require("localdep"));
net.createServer((c) => c.end()).listen(process.env.SOCKET_PATH);
process.on("SIGTERM", () => process.exit(0));
"#;

#[test]
fn up_installs_node_packages_and_sets_node_path() {
    if !npm_available() {
        return;
    }
    let sandbox = Sandbox::new();
    let plugin = sandbox.path().join("plugin");
    std::fs::create_dir_all(plugin.join("localdep")).unwrap();
    std::fs::write(plugin.join("daemon.js"), DAEMON).unwrap();
    std::fs::write(
        plugin.join("package.json"),
        r#"{"name": "plug", "version": "1.0.0", "dependencies": {"localdep": "file:./localdep"}}"#,
    )
    .unwrap();
    std::fs::write(
        plugin.join("localdep/package.json"),
        r#"{"name": "localdep", "version": "1.0.0", "main": "index.js"}"#,
    )
    .unwrap();
    std::fs::write(
        plugin.join("localdep/index.js"),
        "module.exports = \"from localdep\";\n",
    )
    .unwrap();
    let config = sandbox.config(
        r#"
[process.js]
args = ["daemon.js"]
cwd = "plugin"
socket = "js.sock"
node = {}
"#,
    );
    let c = config.to_str().unwrap();
    let up = sandbox.up(&config);
    wait_for_states_until(
        &sandbox,
        &config,
        &[("js", "running")],
        Instant::now() + ENV_DEADLINE,
    );
    let modules = sandbox.state_dir().join("envs/js/node/node_modules");
    let logs = sandbox.run(&["logs", "js", "-c", c]);
    logs.expect_success();
    assert!(
        logs.stdout
            .contains(&format!("node_path {}\n", modules.display())),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout.contains("localdep from localdep\n"),
        "{}",
        logs.stdout
    );
    let out = up.stdout();
    assert!(
        out.contains("tend: node packages for js installed"),
        "{out}"
    );
    sandbox.run(&["down", "-c", c]).expect_success();
}
