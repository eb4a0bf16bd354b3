//! Processes whose name is not UTF-8 (`testd-демон-плагин`, which the
//! kernel cuts at 15 bytes in the middle of "н"): the `tend up` subreaper
//! reaps such adopted zombies, and `down` stops such escapees.

use std::{fs, path::Path};

use rustix::process::Signal;

use crate::harness::*;

/// `ppid` from `/proc/<pid>/stat`, read as bytes.
fn ppid_of(pid: u32) -> Option<u32> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    std::str::from_utf8(after_comm)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn escapees_named_mid_character_are_reaped_and_stopped_by_down() {
    let sandbox = Sandbox::new();
    let link = sandbox.path().join("testd-демон-плагин");
    std::os::unix::fs::symlink(testd(), &link).unwrap();
    let body = ["reaped", "stopped"]
        .map(|name| {
            format!(
                "[process.{name}]\ncommand = \"{}\"\nargs = [\"--double-fork\"]\nsocket = \"{name}.sock\"\n",
                link.display()
            )
        })
        .join("\n");
    let config = sandbox.config(&body);
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("reaped", "running"), ("stopped", "running")],
    );
    let deadline = std::time::Instant::now() + SOON;
    let escapee = |name: &str| {
        let mut pid = None;
        wait_until(&format!("{name}'s escapee"), deadline, || {
            pid = pids_in(&sandbox.run(&["logs", name, "-c", c]).stdout, "escaped ")
                .first()
                .copied();
            pid.is_some()
        });
        let pid = pid.unwrap();
        // Adopted by the subreaper once the intermediate process exited.
        wait_until(&format!("{pid} to be adopted by tend up"), deadline, || {
            ppid_of(pid) == Some(up.pid())
        });
        let comm = fs::read(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm, b"testd-\xd0\xb4\xd0\xb5\xd0\xbc\xd0\xbe\xd0\n");
        pid
    };
    let (reaped, stopped) = (escapee("reaped"), escapee("stopped"));
    let stopped = Tracked::new(stopped);
    assert!(stopped.alive());

    // Killed, it is a zombie child of tend up, which must reap it.
    kill(reaped, Signal::KILL);
    let proc_dir = format!("/proc/{reaped}");
    wait_until(&format!("zombie {reaped} to be reaped"), deadline, || {
        !Path::new(&proc_dir).exists()
    });

    sandbox.run(&["down", "-c", c]).expect_success();
    up.wait();
    assert!(
        !stopped.alive(),
        "escapee {} outlived `tend down`",
        stopped.pid
    );
}
