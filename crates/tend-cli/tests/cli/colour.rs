//! Colour on a terminal only, and never with `NO_COLOR`: `tend up` and
//! `tend logs` run on a pseudo-terminal, then with `NO_COLOR=1`, then
//! piped (the other tests check piped output has no escape codes).

use std::{
    fs::File,
    io::Read,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
};

use rustix::{
    fs::{Mode, OFlags},
    pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt},
};

use crate::harness::*;

/// Runs `tend ARGS` with stdout and stderr on a new pseudo-terminal and
/// returns all it wrote there (the process must end by itself).
fn on_terminal(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let controller =
        openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&controller).expect("grantpt");
    unlockpt(&controller).expect("unlockpt");
    let name = ptsname(&controller, Vec::new()).expect("ptsname");
    let terminal: OwnedFd = rustix::fs::open(
        Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open the terminal side");
    let mut child = sandbox
        .command(args)
        .envs(env.iter().copied())
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal))
        .spawn()
        .expect("spawn tend");
    // The reader ends when the last terminal descriptor is closed (EIO).
    let (done, output) = mpsc::channel();
    let mut reader = File::from(controller);
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        let _ = done.send(bytes);
    });
    let status = {
        let deadline = std::time::Instant::now() + SOON;
        wait_until("tend to exit", deadline, || {
            child.try_wait().expect("try_wait").is_some()
        });
        child.wait().expect("wait")
    };
    let bytes = output.recv_timeout(SOON).expect("the terminal's output");
    (status.code(), String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, "no config");
    let c = config.to_str().unwrap();
    let up = ["up", "--exit-on-failure", "-c", c];

    let (code, coloured) = on_terminal(&sandbox, &up, &[]);
    assert_eq!(code, Some(1), "{coloured}");
    // The failed state is red and bold.
    assert!(coloured.contains("\x1b[1m\x1b[31merror"), "{coloured:?}");

    // NO_COLOR: none, the diagnostics on stderr included.
    let (code, plain) = on_terminal(&sandbox, &up, &[("NO_COLOR", "1"), ("TEND_LOG", "info")]);
    assert_eq!(code, Some(1), "{plain}");
    assert!(plain.contains("-> error"), "{plain}");
    assert!(plain.contains(" INFO "), "{plain}");
    assert!(!plain.contains('\x1b'), "{plain:?}");

    // Redirected: none either.
    let piped = sandbox
        .command(&up)
        .env("TEND_LOG", "info")
        .output()
        .expect("tend up");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains(" INFO "), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !piped.stdout.contains(&0x1b),
        "{stderr:?}"
    );

    // `tend logs` of every daemon (from the files now): names in colour.
    let (code, logs) = on_terminal(&sandbox, &["logs", "-c", c], &[]);
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("\x1b[36mgood\x1b[0m | "), "{logs:?}");
    let (_, plain_logs) = on_terminal(&sandbox, &["logs", "-c", c], &[("NO_COLOR", "1")]);
    assert!(plain_logs.contains("good | --- started"), "{plain_logs:?}");
    assert!(!plain_logs.contains('\x1b'), "{plain_logs:?}");
}
