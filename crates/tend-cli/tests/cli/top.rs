//! `tend top` and `tend status --watch` in a real pseudo-terminal: the
//! screen (read by a terminal emulator, vt100) shows the daemons and
//! follows a state change pushed by the supervisor; `q` and Ctrl-C exit 0
//! and leave the terminal as they found it (main screen, cooked mode,
//! cursor shown).

use std::{
    io::{Read, Write},
    os::fd::BorrowedFd,
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::Instant,
};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use crate::harness::*;

const ROWS: u16 = 30;
const COLS: u16 = 140;

/// What the pty's reader thread collects: the bytes and their screen.
type Shared = Arc<Mutex<(Vec<u8>, vt100::Parser)>>;

/// A `tend` running in a pseudo-terminal, and what it drew.
struct InPty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Box<dyn Write + Send>,
    /// Everything it wrote, and the screen that makes.
    output: Shared,
    /// The thread reading the pty, which ends once `tend` exited and its
    /// last bytes were read.
    reader: thread::JoinHandle<()>,
}

impl InPty {
    fn spawn(sandbox: &Sandbox, args: &[&str]) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let mut command = CommandBuilder::new(tend_bin());
        command.args(args);
        command.cwd(sandbox.path());
        command.env(SANDBOX_ENV, sandbox.path());
        command.env("TERM", "xterm-256color");
        command.env_remove("NO_COLOR");
        let child = pair
            .slave
            .spawn_command(command)
            .expect("spawn tend in the pty");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let output = Arc::new(Mutex::new((
            Vec::new(),
            vt100::Parser::new(
                ROWS.try_into().expect("rows"),
                COLS.try_into().expect("cols"),
                0,
            ),
        )));
        let sink = Arc::clone(&output);
        let reader = thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                let mut output = sink.lock().unwrap_or_else(|e| e.into_inner());
                output.0.extend_from_slice(&buffer[..read]);
                output.1.process(&buffer[..read]);
            }
        });
        InPty {
            child,
            master: pair.master,
            writer,
            output,
            reader,
        }
    }

    fn screen(&self) -> String {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        output.1.screen().contents()
    }

    /// Waits until a line of the screen holds every one of `parts`.
    #[track_caller]
    fn wait_for_line(&self, parts: &[&str]) -> String {
        let mut screen = String::new();
        let shown = holds_before(Instant::now() + SOON, || {
            screen = self.screen();
            screen
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
        });
        assert!(shown, "no line with {parts:?} on the screen:\n{screen}");
        screen
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).expect("type into the pty");
        self.writer.flush().expect("flush the pty");
    }

    /// Waits for the exit code, and for the last of the output to be
    /// read (the pty reads end of file once the last slave is closed).
    #[track_caller]
    fn exit_code(&mut self) -> u32 {
        let mut status = None;
        wait_until("tend to exit", Instant::now() + SOON, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        wait_until("the pty's end of file", Instant::now() + SOON, || {
            self.reader.is_finished()
        });
        status.unwrap().exit_code()
    }

    /// Asserts that the terminal is as it was before: the alternate screen
    /// left after it was entered, the cursor shown, echo and line editing
    /// back on.
    #[track_caller]
    fn assert_restored(&self) {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, parser) = &*output;
        let text = String::from_utf8_lossy(bytes);
        let entered = text
            .find("\x1b[?1049h")
            .expect("the view used the alternate screen");
        let left = text
            .rfind("\x1b[?1049l")
            .expect("the view left the alternate screen");
        assert!(left > entered);
        assert!(!parser.screen().alternate_screen());
        assert!(!parser.screen().hide_cursor(), "the cursor is hidden");
        let fd = self.master.as_raw_fd().expect("pty fd");
        // SAFETY: the master stays open for as long as `self` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let termios = rustix::termios::tcgetattr(fd).expect("tcgetattr");
        let local = termios.local_modes;
        assert!(
            local.contains(rustix::termios::LocalModes::ICANON)
                && local.contains(rustix::termios::LocalModes::ECHO),
            "raw mode left on: {local:?}"
        );
    }
}

fn two_daemons(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.config(&format!(
        r#"
[process.alpha]
command = "{testd}"
args = ["--stdout", "hello from alpha"]
socket = "alpha.sock"

[process.beta]
command = "{testd}"
socket = "beta.sock"

[process.beta.healthcheck]
interval = "500ms"
"#,
        testd = testd().display(),
    ))
}

fn stop(sandbox: &Sandbox, config: &Path, name: &str) {
    sandbox
        .run(&["stop", name, "-c", config.to_str().unwrap()])
        .expect_success();
}

#[test]
fn top_follows_a_state_change_and_q_restores_the_terminal() {
    let sandbox = Sandbox::new();
    let config = two_daemons(&sandbox);
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("alpha", "running"), ("beta", "running")],
    );

    let mut top = InPty::spawn(&sandbox, &["top", "-c", config.to_str().unwrap()]);
    let screen = top.wait_for_line(&["alpha", "running", "hello from alpha"]);
    for header in [
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "CPU", "MEM",
    ] {
        assert!(screen.contains(header), "{header} missing:\n{screen}");
    }
    top.wait_for_line(&["beta", "running", "ok"]);
    top.wait_for_line(&["2 daemons: 2 running"]);

    // Pushed by the supervisor: the view is not told to refresh.
    stop(&sandbox, &config, "alpha");
    top.wait_for_line(&["alpha", "stopped"]);
    top.wait_for_line(&["alpha: stopping -> stopped"]);
    top.wait_for_line(&["1 running, 1 stopped"]);

    top.type_keys(b"q");
    assert_eq!(top.exit_code(), 0, "screen:\n{}", top.screen());
    top.assert_restored();
}

#[test]
fn status_watch_of_one_daemon_quits_on_ctrl_c() {
    let sandbox = Sandbox::new();
    let config = two_daemons(&sandbox);
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("alpha", "running"), ("beta", "running")],
    );

    // -c after the command, as with every command.
    let mut watch = InPty::spawn(&sandbox, &["status", "beta", "--watch", "-c", c]);
    watch.wait_for_line(&["beta", "running"]);
    assert!(!watch.screen().contains("alpha"), "{}", watch.screen());
    stop(&sandbox, &config, "beta");
    watch.wait_for_line(&["beta", "stopped"]);

    watch.type_keys(b"\x03");
    assert_eq!(watch.exit_code(), 0);
    watch.assert_restored();
}

#[test]
fn the_live_view_needs_a_terminal() {
    let sandbox = Sandbox::new();
    let config = two_daemons(&sandbox);
    let run = sandbox.run(&["top", "-c", config.to_str().unwrap()]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("needs a terminal") && run.stderr.contains("tend status --json"),
        "{}",
        run.stderr
    );
}
