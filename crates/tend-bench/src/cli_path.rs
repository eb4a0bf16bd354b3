//! The CLI path: `tend up` on a generated config of N daemons (the same
//! testd and health check as the scale figures; the CLI's defaults
//! otherwise, so each daemon's output goes to a log file) until
//! `tend status --json` reports them all running, then the latency of
//! `tend status --json`, `tend status` (the table), `tend logs NAME` and
//! the live view's first draw (`tend top` in a pseudo-terminal, until its
//! screen shows every daemon counted), the memory of `tend up` and its
//! guard, then `tend down`.
//!
//! "All running" is seen by calling `tend status --json` back to back
//! (10 ms apart), so that figure is an upper bound: it includes up to one
//! status call and one pause. The daemons' own stamps give the lower
//! bound (the last `listen()`).

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};
use serde::Serialize;

use crate::{
    clock::{now_ns, read_stamps},
    report::Settings,
    stats::{Summary, summarize},
    sys,
};

/// The CLI figures for one size.
#[derive(Debug, Clone, Serialize)]
pub struct CliRow {
    /// Number of daemons.
    pub n: usize,
    /// `tend up` spawned → a `tend status --json` reports all running
    /// (upper bound).
    pub up_to_all_running_ms: f64,
    /// `tend up` spawned → the last daemon listened (lower bound).
    pub up_to_last_listen_ms: f64,
    /// Status calls made while waiting.
    pub status_polls: usize,
    /// Wall time of `tend status --json` with every daemon running.
    pub status: Option<Summary>,
    /// Wall time of `tend status` (the table).
    pub status_table: Option<Summary>,
    /// Wall time of `tend logs NAME` (100 lines of one daemon).
    pub logs: Option<Summary>,
    /// `tend top` spawned in a pseudo-terminal → its screen counts every
    /// daemon; `None` for a tend without `top`.
    pub top_first_draw: Option<Summary>,
    /// Resident memory of the tend processes alive after `up`, KiB.
    pub server_rss_kib: Option<u64>,
    /// Proportional set size of `tend up` and its guard together, KiB.
    pub server_pss_kib: Option<u64>,
    /// How the daemons were stopped.
    pub stop_method: String,
    /// Stop command issued → every daemon gone.
    pub stop_ms: Option<f64>,
}

/// Checks that `tend` exists and has `up` and `status --json`; the reason
/// to skip the CLI figures otherwise.
pub fn probe(tend: &Path) -> Result<PathBuf, String> {
    if !sys::is_executable(tend) {
        return Err(format!(
            "no tend binary at {} (cargo build --release -p tend-cli)",
            tend.display()
        ));
    }
    if !help_mentions(tend, "up", "Usage") {
        return Err(format!(
            "{} has no `up` command yet (`tend up --help` prints no usage)",
            tend.display()
        ));
    }
    if !help_mentions(tend, "status", "--json") {
        return Err(format!(
            "{} has no `status --json` yet (`tend status --help` does not mention --json)",
            tend.display()
        ));
    }
    Ok(tend.to_owned())
}

/// Whether `tend <command> --help` succeeds and prints `needle`.
fn help_mentions(tend: &Path, command: &str, needle: &str) -> bool {
    let mut help = Command::new(tend);
    help.args([command, "--help"]);
    output_within(&mut help, Duration::from_secs(10)).is_ok_and(|(out, _)| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(needle)
    })
}

/// Runs `command` to completion with its output captured; kills it after
/// `timeout`. Returns the output and the wall time.
fn output_within(command: &mut Command, timeout: Duration) -> anyhow::Result<(Output, Duration)> {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = sender.send(output.map(|o| (o, started.elapsed())));
    });
    match receiver.recv_timeout(timeout) {
        Ok(result) => Ok(result?),
        Err(_) => {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            bail!("{command:?} did not finish within {timeout:?}")
        }
    }
}

#[derive(Serialize)]
struct CliConfig {
    settings: CliSettings,
    process: BTreeMap<String, CliProcess>,
}

#[derive(Serialize)]
struct CliSettings {
    state_dir: PathBuf,
}

#[derive(Serialize)]
struct CliProcess {
    command: PathBuf,
    args: Vec<PathBuf>,
    socket: PathBuf,
    startup_timeout: String,
    healthcheck: CliHealthCheck,
}

#[derive(Serialize)]
struct CliHealthCheck {
    interval: String,
    timeout: String,
    retries: u32,
}

/// One process as `tend status --json` reports it.
struct StatusRow {
    state: String,
    pid: Option<u32>,
}

/// What `tend status --json` says, and how long it took (ns).
fn status(tend: &Path, config: &Path) -> anyhow::Result<(Vec<StatusRow>, i64)> {
    let mut command = Command::new(tend);
    command.args([
        "status".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
    ]);
    let (out, took) = output_within(&mut command, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "tend status --json exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .context("tend status --json did not print a JSON array")?;
    let rows = list
        .iter()
        .map(|p| StatusRow {
            state: p["state"].as_str().unwrap_or_default().to_owned(),
            pid: p["pid"].as_u64().map(|pid| pid as u32),
        })
        .collect();
    Ok((rows, took.as_nanos() as i64))
}

fn running(rows: &[StatusRow]) -> usize {
    rows.iter().filter(|row| row.state == "running").count()
}

/// Whether `pid` is gone or a zombie.
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text
            .rfind(')')
            .and_then(|i| text[i + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Processes running `tend` that are children of this process (a `tend up`
/// in the foreground, or a daemonised server adopted by this subreaper).
fn tend_processes(tend: &Path) -> Vec<u32> {
    let me = std::process::id().to_string();
    let tend = tend.canonicalize().unwrap_or_else(|_| tend.to_owned());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| Some(t[t.rfind(')')? + 1..].split_whitespace().nth(1)?.to_owned()));
            exe.as_deref() == Some(tend.as_path()) && parent.as_deref() == Some(me.as_str())
        })
        .collect()
}

/// Children of `parent` running `exe`.
fn children_running(parent: u32, exe: &Path) -> Vec<u32> {
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_owned());
    let parent = parent.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let running = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| Some(t[t.rfind(')')? + 1..].split_whitespace().nth(1)?.to_owned()));
            running.as_deref() == Some(exe.as_path()) && ppid.as_deref() == Some(parent.as_str())
        })
        .collect()
}

/// Runs `tend ARGS -c CONFIG` to a successful end; its wall time (ns).
fn timed_success(tend: &Path, args: &[&str], config: &Path) -> anyhow::Result<i64> {
    let mut command = Command::new(tend);
    command.args(args).arg("-c").arg(config);
    let (out, took) = output_within(&mut command, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "tend {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took.as_nanos() as i64)
}

/// Spawns `tend top -c CONFIG` in a pseudo-terminal and times it until its
/// screen counts all `n` daemons (the first frame: it draws once it has
/// the supervisor's snapshot), then quits it with `q` (ns).
fn first_draw(tend: &Path, config: &Path, n: usize) -> anyhow::Result<i64> {
    use portable_pty::{CommandBuilder, PtySize, native_pty_system};
    use std::io::{Read, Write};

    const ROWS: u16 = 40;
    const COLS: u16 = 160;
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: ROWS,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("cannot open a pty: {e}"))?;
    let mut command = CommandBuilder::new(tend);
    command.args(["top".as_ref(), "-c".as_ref(), config.as_os_str()]);
    command.env("TERM", "xterm-256color");
    let started = Instant::now();
    let mut child = pair
        .slave
        .spawn_command(command)
        .map_err(|e| anyhow::anyhow!("cannot spawn tend top: {e}"))?;
    drop(pair.slave);
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("pty: {e}"))?;
    let mut writer = pair
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("pty: {e}"))?;
    let (drawn, seen) = mpsc::channel();
    let wanted = format!("{n} daemons: {n} running");
    std::thread::spawn(move || {
        let mut screen = vt100::Parser::new(
            ROWS.try_into().expect("rows"),
            COLS.try_into().expect("cols"),
            0,
        );
        let mut buffer = [0u8; 16 * 1024];
        let mut told = false;
        while let Ok(read @ 1..) = reader.read(&mut buffer) {
            screen.process(&buffer[..read]);
            if !told && screen.screen().contents().contains(&wanted) {
                told = true;
                let _ = drawn.send(());
            }
        }
    });
    let result = seen.recv_timeout(Duration::from_secs(30));
    let took = started.elapsed();
    let _ = writer.write_all(b"q");
    let _ = writer.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("tend top did not quit on q");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    result.map_err(|_| anyhow::anyhow!("tend top did not show all {n} daemons within 30 s"))?;
    Ok(took.as_nanos() as i64)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Runs the CLI figures for `n` daemons.
pub fn run(
    tend: &Path,
    testd: &Path,
    dir: &Path,
    n: usize,
    settings: &Settings,
) -> anyhow::Result<CliRow> {
    let sockets = dir.join("s");
    std::fs::create_dir_all(&sockets)?;
    let stamps = dir.join("cli.ts");
    let config_path = dir.join("tend.toml");
    let config = CliConfig {
        settings: CliSettings {
            state_dir: dir.join("state"),
        },
        process: (0..n)
            .map(|i| {
                let process = CliProcess {
                    command: testd.to_owned(),
                    args: vec!["--timestamps".into(), stamps.clone()],
                    socket: sockets.join(format!("{i:05}.sock")),
                    startup_timeout: "300s".to_owned(),
                    healthcheck: CliHealthCheck {
                        interval: format!("{}ms", settings.health_ms),
                        timeout: "1s".to_owned(),
                        retries: 3,
                    },
                };
                (format!("d{i:05}"), process)
            })
            .collect(),
    };
    std::fs::write(&config_path, toml::to_string(&config)?)?;

    let up_err = dir.join("up.err");
    let t0 = now_ns();
    let mut up = Command::new(tend)
        .args(["up".as_ref(), "-c".as_ref(), config_path.as_os_str()])
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("up.out"))?)
        .stderr(File::create(&up_err)?)
        .spawn()
        .context("spawning tend up")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut polls = 0;
    let (all_running_ns, rows) = loop {
        match up.try_wait()? {
            Some(exit) if !exit.success() => {
                bail!("tend up exited with {exit}: {}", tail(&up_err))
            }
            _ => {}
        }
        polls += 1;
        match status(tend, &config_path) {
            Ok((rows, _)) if running(&rows) == n => break (now_ns(), rows),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!("not all {n} daemons running after 300 s: {}", tail(&up_err));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let last_listen = read_stamps(&stamps)?
        .iter()
        .map(|s| s.listen_ns)
        .max()
        .unwrap_or(t0);
    let mut status_ns = Vec::new();
    for _ in 0..settings.status_reps {
        let (rows, took) = status(tend, &config_path)?;
        if running(&rows) != n {
            bail!(
                "only {} of {n} running during the status runs",
                running(&rows)
            );
        }
        status_ns.push(took);
    }
    let mut status_table_ns = Vec::new();
    let mut logs_ns = Vec::new();
    for _ in 0..settings.status_reps {
        status_table_ns.push(timed_success(tend, &["status"], &config_path)?);
        logs_ns.push(timed_success(tend, &["logs", "d00000"], &config_path)?);
    }
    let top_first_draw = if help_mentions(tend, "top", "Usage") {
        let mut draws = Vec::new();
        for _ in 0..settings.status_reps.min(5) {
            draws.push(first_draw(tend, &config_path, n)?);
        }
        summarize(&draws)
    } else {
        None
    };
    let ups = tend_processes(tend);
    let server_rss_kib = ups
        .iter()
        .copied()
        .filter_map(sys::rss_kib)
        .reduce(|a, b| a + b);
    // The guard is a child of `tend up` running the same executable.
    let server_pss_kib = ups
        .iter()
        .flat_map(|&up| std::iter::once(up).chain(children_running(up, tend)))
        .filter_map(sys::pss_kib)
        .reduce(|a, b| a + b);

    let pids: Vec<u32> = rows.iter().filter_map(|row| row.pid).collect();
    let stop_started = Instant::now();
    let stop_method = if help_mentions(tend, "down", "Usage") {
        let mut down = Command::new(tend);
        down.args(["down".as_ref(), "-c".as_ref(), config_path.as_os_str()]);
        let (out, _) = output_within(&mut down, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("tend down exited with {}", out.status);
        }
        "tend down"
    } else if up.try_wait()?.is_none() {
        let pid = Pid::from_raw(up.id() as i32).context("pid 0")?;
        rustix::process::kill_process(pid, Signal::TERM)?;
        "SIGTERM to the foreground tend up"
    } else {
        "none available (the benchmark kills what is left)"
    };
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    while !pids.iter().all(|&pid| is_gone(pid)) && Instant::now() < stop_deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopped = pids.iter().all(|&pid| is_gone(pid));
    // A foreground `tend up` should end with its daemons; if it does not,
    // the benchmark's sweep kills it.
    let up_deadline = Instant::now() + Duration::from_secs(10);
    while up.try_wait()?.is_none() && Instant::now() < up_deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(CliRow {
        n,
        up_to_all_running_ms: (all_running_ns - t0) as f64 / 1e6,
        up_to_last_listen_ms: (last_listen - t0) as f64 / 1e6,
        status_polls: polls,
        status: summarize(&status_ns),
        status_table: summarize(&status_table_ns),
        logs: summarize(&logs_ns),
        top_first_draw,
        server_rss_kib,
        server_pss_kib,
        stop_method: stop_method.to_owned(),
        stop_ms: stopped.then(|| stop_started.elapsed().as_secs_f64() * 1e3),
    })
}
