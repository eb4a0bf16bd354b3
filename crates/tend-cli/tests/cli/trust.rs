//! Trust boundaries ("Ownership you can prove"): what another local user
//! can put where `tend` looks — a state directory or a symlink in its
//! place, files inside it, a listening control socket, a config file, a
//! log file — is refused, never adopted, and nothing of ours goes to it.
//!
//! The attacker is uid 65534: tests that need files of another user run
//! as root (as in CI) and are skipped, with the reason printed, elsewhere.

use std::{
    fs,
    io::Read,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{
            fs::{PermissionsExt, chown, lchown, symlink},
            net::UnixListener,
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use crate::harness::*;

const NOBODY: u32 = 65534;

fn root_or_skip(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("{test}: skipped: needs root to make files and processes of uid {NOBODY}");
    }
    root
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Hands `path` and everything below it to uid 65534 (links themselves,
/// not their targets).
fn give_to_nobody(path: &Path) {
    lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            give_to_nobody(&entry.unwrap().path());
        }
    }
}

/// Plants, in `dir`, what the attacker planted: a virtualenv whose
/// interpreter leaves `marker` when run, `tend.lock -> precious` and
/// `logs/py.log -> precious2`; all of it owned by uid 65534.
fn plant(dir: &Path, marker: &Path, precious: &Path, precious2: &Path) {
    let bin = dir.join("envs/py/venv/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(
        bin.join("python"),
        format!("#!/bin/sh\ntouch {}\necho Python 3.99\n", marker.display()),
    )
    .unwrap();
    set_mode(&bin.join("python"), 0o755);
    symlink(precious, dir.join("tend.lock")).unwrap();
    fs::create_dir_all(dir.join("logs")).unwrap();
    symlink(precious2, dir.join("logs/py.log")).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        give_to_nobody(&entry.unwrap().path());
    }
}

/// A daemon with a Python environment, the way the attack needs it: the
/// supervisor runs the venv's interpreter to check it.
fn python_daemon_config(sandbox: &Sandbox) -> PathBuf {
    sandbox.config(
        "[process.py]\ncommand = \"python3\"\nargs = [\"-c\", \"print('secret')\"]\n\
         socket = \"py.sock\"\n\n[process.py.python]\n",
    )
}

#[test]
fn a_symlinked_state_directory_is_refused_and_nothing_planted_is_used() {
    if !root_or_skip("a_symlinked_state_directory_is_refused_and_nothing_planted_is_used") {
        return;
    }
    // The link points at a world-writable directory of root (the issue's
    // case: an owner check that follows the link approves it) or of the
    // attacker.
    for owner in [0, NOBODY] {
        let sandbox = Sandbox::new();
        let shared = sandbox.path().join("shared");
        fs::create_dir(&shared).unwrap();
        let marker = sandbox.path().join("planted-python-ran");
        let precious = sandbox.path().join("precious");
        let precious2 = sandbox.path().join("precious2");
        fs::write(&precious, "precious").unwrap();
        fs::write(&precious2, "precious2").unwrap();
        plant(&shared, &marker, &precious, &precious2);
        chown(&shared, Some(owner), Some(owner)).unwrap();
        set_mode(&shared, 0o777);
        symlink(&shared, sandbox.state_dir()).unwrap();
        lchown(sandbox.state_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
        let config = python_daemon_config(&sandbox);

        let up = sandbox.run(&["up", "-c", config.to_str().unwrap()]);
        up.expect_code(1);
        let state_dir = sandbox.state_dir().display().to_string();
        for part in [
            state_dir.as_str(),
            "is a symbolic link",
            "remove the link",
            "settings.state_dir",
        ] {
            assert!(up.stderr.contains(part), "{part:?} missing: {}", up.stderr);
        }
        assert_eq!(fs::read_to_string(&precious).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&precious2).unwrap(), "precious2");
        assert!(!marker.exists(), "the planted python ran");
        assert_eq!(mode_of(&shared), 0o777, "the link's target was chmod'ed");
        assert!(!shared.join("tend.sock").exists());
    }
}

#[test]
fn another_users_state_directory_is_refused() {
    if !root_or_skip("another_users_state_directory_is_refused") {
        return;
    }
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("planted-python-ran");
    let precious = sandbox.path().join("precious");
    fs::write(&precious, "precious").unwrap();
    let state_dir = sandbox.state_dir();
    fs::create_dir(&state_dir).unwrap();
    plant(&state_dir, &marker, &precious, &precious);
    give_to_nobody(&state_dir);
    set_mode(&state_dir, 0o777);
    let config = python_daemon_config(&sandbox);
    let up = sandbox.run(&["up", "-c", config.to_str().unwrap()]);
    up.expect_code(1);
    assert!(up.stderr.contains("belongs to uid 65534"), "{}", up.stderr);
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious");
    assert!(!marker.exists(), "the planted python ran");
    assert_eq!(mode_of(&state_dir), 0o777);
}

/// A state directory of ours that others could write (made loosely, or
/// widened) is restricted to 0700, and what they put in it meanwhile is
/// refused: the lock, an environment, a log file.
#[test]
fn files_planted_in_a_loose_state_directory_of_ours_are_not_adopted() {
    if !root_or_skip("files_planted_in_a_loose_state_directory_of_ours_are_not_adopted") {
        return;
    }
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("planted-python-ran");
    let precious = sandbox.path().join("precious");
    let precious2 = sandbox.path().join("precious2");
    fs::write(&precious, "precious").unwrap();
    fs::write(&precious2, "precious2").unwrap();
    let state_dir = sandbox.state_dir();
    fs::create_dir(&state_dir).unwrap();
    plant(&state_dir, &marker, &precious, &precious2);
    // The logs folder is ours; the link in it is not.
    chown(state_dir.join("logs"), Some(0), Some(0)).unwrap();
    set_mode(&state_dir, 0o777);
    let config = python_daemon_config(&sandbox);
    let c = config.to_str().unwrap();

    let up = sandbox.run(&["up", "-c", c]);
    up.expect_code(1);
    for part in ["tend.lock", "is a symbolic link"] {
        assert!(up.stderr.contains(part), "{part:?} missing: {}", up.stderr);
    }
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious");
    assert_eq!(mode_of(&state_dir), 0o700, "our own directory is tightened");

    // Without the lock link: the supervisor runs, but neither the planted
    // environment nor the planted log file is used.
    fs::remove_file(state_dir.join("tend.lock")).unwrap();
    let mut up = sandbox.up(&config);
    let deadline = Instant::now() + SOON;
    wait_until("py to be refused", deadline, || {
        up.stderr().contains("py did not start")
    });
    let stderr = up.stderr();
    for part in [
        "cannot use the environment directory",
        "envs/py",
        "belongs to uid 65534",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    assert!(!marker.exists(), "the planted python ran");
    sandbox.run(&["down", "-c", c]).expect_success();
    up.wait();
    assert_eq!(fs::read_to_string(&precious2).unwrap(), "precious2");
}

/// A default `logs/NAME.log` planted as a link in a state directory of
/// ours is refused at start, naming the daemon, the file and the fix.
#[test]
fn a_planted_log_link_in_the_state_directory_fails_the_start() {
    let sandbox = Sandbox::new();
    let precious = sandbox.path().join("precious");
    fs::write(&precious, "precious").unwrap();
    let testd = testd();
    let config = sandbox.config(&format!(
        "[process.one]\ncommand = \"{}\"\nsocket = \"one.sock\"\n",
        testd.display()
    ));
    let logs = sandbox.state_dir().join("logs");
    fs::create_dir_all(&logs).unwrap();
    set_mode(&sandbox.state_dir(), 0o700);
    set_mode(&logs, 0o700);
    symlink(&precious, logs.join("one.log")).unwrap();
    let mut up = sandbox.up(&config);
    wait_until("one to be refused", Instant::now() + SOON, || {
        up.stderr().contains("one did not start")
    });
    let stderr = up.stderr();
    let log = logs.join("one.log").display().to_string();
    for part in [
        "cannot use the log file",
        log.as_str(),
        "\"one\"",
        "symbolic link",
        "set another log_file",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    sandbox
        .run(&["down", "-c", config.to_str().unwrap()])
        .expect_success();
    up.wait();
    assert_eq!(fs::read_to_string(&precious).unwrap(), "precious");
}

/// `log_file` outside the state directory: a link to a file of ours and
/// another user's world-writable file are refused at start; a fresh one is
/// created 0600 and written.
#[test]
fn an_untrusted_log_file_outside_the_state_directory_fails_the_start() {
    let root = rustix::process::geteuid().is_root();
    let sandbox = Sandbox::new();
    let shared = sandbox.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let rootfile = sandbox.path().join("rootfile");
    fs::write(&rootfile, "keep").unwrap();
    symlink(&rootfile, shared.join("app2.log")).unwrap();
    let planted = shared.join("app.log");
    fs::write(&planted, "").unwrap();
    set_mode(&planted, 0o666);
    if root {
        chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let testd = testd();
    let daemon = |name: &str, log: &Path| {
        format!(
            "[process.{name}]\ncommand = \"{}\"\nargs = [\"--print-cwd\"]\nsocket = \"{name}.sock\"\nlog_file = \"{}\"\n\n",
            testd.display(),
            log.display()
        )
    };
    let fresh = shared.join("fresh.log");
    let config = sandbox.config(
        &[
            daemon("planted", &planted),
            daemon("linked", &shared.join("app2.log")),
            daemon("fresh", &fresh),
        ]
        .concat(),
    );
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_until("both to be refused", Instant::now() + SOON, || {
        let stderr = up.stderr();
        stderr.contains("planted did not start") && stderr.contains("linked did not start")
    });
    wait_for_states(&sandbox, &config, &[("fresh", "running")]);
    let stderr = up.stderr();
    let expected_planted = if root {
        "belongs to uid 65534"
    } else {
        "lets others write it"
    };
    for part in [
        planted.display().to_string().as_str(),
        expected_planted,
        shared.join("app2.log").display().to_string().as_str(),
        "symbolic link",
        "set another log_file",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    sandbox.run(&["down", "-c", c]).expect_success();
    up.wait();
    assert_eq!(fs::read_to_string(&rootfile).unwrap(), "keep");
    assert_eq!(fs::read_to_string(&planted).unwrap(), "");
    assert_eq!(mode_of(&fresh), 0o600);
}

/// A listener standing in for a supervisor; counts what clients sent.
struct FakeServer {
    listener: UnixListener,
}

impl FakeServer {
    fn bound(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        FakeServer { listener }
    }

    /// Connections made so far, and the bytes they sent in all. Call it
    /// once the clients exited: each connection then reads to its end.
    fn received(&self) -> (usize, usize) {
        let (mut connections, mut bytes) = (0, 0);
        while let Ok((mut stream, _)) = self.listener.accept() {
            stream.set_nonblocking(false).unwrap();
            let mut sent = Vec::new();
            stream.read_to_end(&mut sent).unwrap();
            connections += 1;
            bytes += sent.len();
        }
        (connections, bytes)
    }
}

/// Every client command that may carry data, against `config` and
/// against `socket` directly.
fn client_commands<'a>(config: &'a str, socket: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["status", "-c", config],
        vec![
            "call",
            "one",
            "secret_method",
            "{\"password\": 1}",
            "-c",
            config,
        ],
        vec!["publish", "secret_event", "{\"password\": 1}", "-c", config],
        vec!["logs", "one", "-c", config],
        vec!["down", "--socket", socket],
    ]
}

#[test]
fn clients_send_nothing_to_a_socket_in_another_users_directory() {
    if !root_or_skip("clients_send_nothing_to_a_socket_in_another_users_directory") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config("[process.one]\ncommand = \"x\"\n");
    let state_dir = sandbox.state_dir();
    fs::create_dir(&state_dir).unwrap();
    set_mode(&state_dir, 0o755);
    let socket = state_dir.join("tend.sock");
    let server = FakeServer::bound(&socket);
    chown(&state_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    for args in client_commands(config.to_str().unwrap(), socket.to_str().unwrap()) {
        let run = sandbox.run(&args);
        run.expect_code(1);
        for part in [
            "refusing to talk to",
            "belongs to uid 65534",
            "nothing was sent",
        ] {
            assert!(
                run.stderr.contains(part),
                "{args:?}: {part:?}: {}",
                run.stderr
            );
        }
    }
    assert_eq!(server.received(), (0, 0));

    // Nor to one in a directory others may write.
    chown(&state_dir, Some(0), Some(0)).unwrap();
    set_mode(&state_dir, 0o777);
    let run = sandbox.run(&["status", "-c", config.to_str().unwrap()]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("may be written by others"),
        "{}",
        run.stderr
    );
    assert_eq!(server.received(), (0, 0));
}

#[test]
fn clients_send_nothing_to_a_listener_of_another_user() {
    if !root_or_skip("clients_send_nothing_to_a_listener_of_another_user") {
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config("[process.one]\ncommand = \"x\"\n");
    let state_dir = sandbox.state_dir();
    fs::create_dir(&state_dir).unwrap();
    set_mode(&state_dir, 0o700);
    let socket = state_dir.join("tend.sock");
    // Bound here, in our own directory, but listening in a child running
    // as uid 65534: the kernel records the listener's credentials, which
    // is what SO_PEERCRED shows a client.
    let fd: OwnedFd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(&socket).unwrap()).unwrap();
    let raw = fd.as_raw_fd();
    let mut command = Command::new("true");
    command
        .env(SANDBOX_ENV, sandbox.path())
        .stdin(Stdio::null())
        .uid(NOBODY)
        .gid(NOBODY);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one system call (listen), which is async-signal-safe; `raw`
    // is a descriptor the child inherited and nothing closes meanwhile.
    unsafe {
        command.pre_exec(move || {
            // SAFETY: `raw` stays open in the child until exec.
            let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
            rustix::net::listen(fd, 8).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().unwrap();
    let child_pid = child.id();
    assert!(child.wait().unwrap().success());
    let listener = UnixListener::from(fd);
    listener.set_nonblocking(true).unwrap();
    let server = FakeServer { listener };

    for args in client_commands(config.to_str().unwrap(), socket.to_str().unwrap()) {
        let run = sandbox.run(&args);
        run.expect_code(1);
        let pid = format!("pid {child_pid}");
        for part in [
            "refusing to talk to",
            socket.to_str().unwrap(),
            "runs as uid 65534",
            pid.as_str(),
        ] {
            assert!(
                run.stderr.contains(part),
                "{args:?}: {part:?}: {}",
                run.stderr
            );
        }
    }
    let (connections, bytes) = server.received();
    assert_eq!(
        connections, 5,
        "each client connected, then checked its peer"
    );
    assert_eq!(bytes, 0, "a client sent something to the impostor");
}

/// `./tend.toml` in a directory others can write (and any `-c FILE`) is
/// used only if it is ours or root's and nobody else may write it.
#[test]
fn a_config_file_others_can_write_is_refused() {
    let sandbox = Sandbox::new();
    let shared = sandbox.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    let config = shared.join("tend.toml");
    let marker = sandbox.path().join("ran");
    fs::write(
        &config,
        format!(
            "[settings]\nstate_dir = \"{}\"\n\n[process.evil]\ncommand = \"touch\"\nargs = [\"{}\"]\n",
            sandbox.state_dir().display(),
            marker.display()
        ),
    )
    .unwrap();
    set_mode(&config, 0o666);
    let c = config.to_str().unwrap();
    for args in [
        vec!["check"],
        vec!["status"],
        vec!["up"],
        vec!["up", "-c", c],
    ] {
        let run = sandbox.run_in(&shared, &args);
        run.expect_code(2);
        for part in [c, "any user may write it", "chmod o-w"] {
            assert!(
                run.stderr.contains(part),
                "{args:?}: {part:?}: {}",
                run.stderr
            );
        }
    }
    set_mode(&config, 0o644);
    if rustix::process::geteuid().is_root() {
        chown(&config, Some(NOBODY), Some(NOBODY)).unwrap();
        for args in [vec!["check"], vec!["up"]] {
            let run = sandbox.run_in(&shared, &args);
            run.expect_code(2);
            assert!(
                run.stderr.contains("belongs to uid 65534"),
                "{args:?}: {}",
                run.stderr
            );
        }
        chown(&config, Some(0), Some(0)).unwrap();
    } else {
        eprintln!("a_config_file_others_can_write_is_refused: the uid 65534 case needs root");
    }
    assert!(!marker.exists(), "the planted config ran");
    sandbox.run_in(&shared, &["check"]).expect_success();
}
