//! The parent: runs the latency role, the raw and supervised scale runs
//! and the CLI runs, samples the manager's memory and CPU, and writes the
//! results.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use rustix::process::Signal;

use crate::{
    BenchContainment, RunArgs, cleanup, cli_path,
    clock::{now_ns, read_stamps, wait_stamps},
    manager_role::{LatencySamples, ProbeMsg, ScaleMsg},
    raw::{self, RawDaemon},
    report::{self, Results, ScaleRow, Settings, TendScaleRow},
    stats::summarize,
    sys::{self, Machine},
};

/// Descriptors a manager holds per running daemon (the leader's pidfd and
/// two pipes); readiness probes and timers are transient and fit in the
/// fixed headroom.
const FDS_PER_DAEMON: u64 = 3;

/// Runs the whole benchmark.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args);
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin_dir = exe.parent().context("executable has no directory")?;
    let testd = args.testd.clone().unwrap_or_else(|| bin_dir.join("testd"));
    if !sys::is_executable(&testd) {
        bail!(
            "the test daemon is not at {}; build it first:\n  \
             cargo build --release -p testd -p tend-cli -p tend-bench",
            testd.display()
        );
    }
    let tend_cli = args.tend.clone().unwrap_or_else(|| bin_dir.join("tend"));
    let mut notes = Vec::new();
    if exe.components().any(|c| c.as_os_str() == "debug") {
        let note = "built without --release: figures are not representative";
        eprintln!("tend-bench: warning: {note}");
        notes.push(note.to_owned());
    }
    let nofile = sys::raise_nofile();
    let scratch = tempfile::Builder::new()
        .prefix("tb-")
        .tempdir_in("/tmp")
        .context("creating the scratch directory")?;
    let guard = cleanup::Guard::install(scratch)?;
    let dir = guard.dir().to_owned();
    let started = SystemTime::now();
    let containments = containments(
        &exe,
        &testd,
        &dir.join("probe"),
        args.containment.as_deref(),
        &mut notes,
    )?;
    sweep("probe", &mut notes);
    let load_before = sys::loadavg();
    let cpu_before = sys::system_cpu();

    progress(format_args!(
        "latency: {} rounds raw and supervised ({}), {} stops of a SIGTERM-ignoring daemon each",
        settings.reps,
        names(&containments),
        settings.stubborn_reps
    ));
    let samples = latency(&exe, &testd, &dir.join("lat"), &settings, &containments)?;
    sweep("latency", &mut notes);
    for t in &samples.tend {
        if t.in_force.as_deref() != Some(t.requested.name()) {
            notes.push(format!(
                "latency: {} asked for, {} in force",
                t.requested,
                t.in_force.as_deref().unwrap_or("none")
            ));
        }
    }

    // Readiness by kind, under the first containment.
    let readiness = match containments.first() {
        Some(&containment) => {
            let gap_reps = settings.reps.clamp(1, 20);
            progress(format_args!(
                "readiness: {} rounds of socket, tcp and notify, {gap_reps} late listens ({containment})",
                settings.reps
            ));
            match crate::readiness::measure(
                &exe,
                &testd,
                &dir.join("rdy"),
                settings.reps,
                gap_reps,
                containment,
            ) {
                Ok(section) => Some(section),
                Err(e) => {
                    notes.push(format!("readiness: {e:#}"));
                    None
                }
            }
        }
        None => None,
    };
    sweep("readiness", &mut notes);

    let cli = if args.no_cli {
        Err("skipped with --no-cli".to_owned())
    } else {
        cli_path::probe(&tend_cli)
    };
    if let Err(reason) = &cli {
        progress(format_args!("CLI figures skipped: {reason}"));
    }
    let mut scale = Vec::new();
    let mut cli_rows = Vec::new();
    for (i, &n) in settings.sizes.iter().enumerate() {
        let needed = n as u64 * FDS_PER_DAEMON + 256;
        if needed > nofile {
            let note = format!(
                "size {n} skipped: needs about {needed} descriptors, RLIMIT_NOFILE allows {nofile}"
            );
            progress(format_args!("{note}"));
            notes.push(note);
            continue;
        }
        // The containment measured first alternates between sizes.
        let mut order = containments.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        let row = scale_row(
            &exe,
            &testd,
            &dir.join(format!("n{n}")),
            n,
            &settings,
            &order,
            &mut notes,
        );
        match row {
            Ok(row) => scale.push(row),
            Err(e) => notes.push(format!("size {n}: {e:#}")),
        }
        sweep(&format!("scale {n}"), &mut notes);
        if let Ok(tend) = &cli {
            progress(format_args!("cli n={n}: tend up, tend status --json"));
            let run = cli_path::run(tend, &testd, &dir.join(format!("c{n}")), n, &settings);
            match run {
                Ok(row) => cli_rows.push(row),
                Err(e) => notes.push(format!("cli {n}: {e:#}")),
            }
            sweep(&format!("cli {n}"), &mut notes);
        }
    }

    let results = Results::new(report::Inputs {
        started_unix: started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        wall_secs: started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        machine: Machine::probe(),
        load_before,
        load_after: sys::loadavg(),
        busy_cpus: sys::system_cpu().busy_since(&cpu_before),
        settings,
        containments: containments.clone(),
        samples: &samples,
        scale,
        cli: cli.map(|_| cli_rows),
        notes,
    });
    let mut markdown = results.markdown();
    if let Some(section) = &readiness {
        markdown.push_str(&section.markdown());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut json = serde_json::to_value(&results)?;
    if let (Some(section), Some(object)) = (&readiness, json.as_object_mut()) {
        object.insert("readiness".to_owned(), serde_json::to_value(section)?);
    }
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(args.out.join("results.md"), &markdown)?;
    println!("{markdown}");
    progress(format_args!(
        "wrote {} and results.md",
        args.out.join("results.json").display()
    ));
    drop(guard);
    Ok(())
}

/// The containments as a list for messages.
fn names(containments: &[BenchContainment]) -> String {
    containments
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The containments to measure: those asked for, or both where cgroups
/// work and process groups alone where they do not (with a note saying
/// why). Whether cgroups work is asked of tend itself: a manager built
/// with cgroup containment starts one daemon and says what is in force.
fn containments(
    exe: &Path,
    testd: &Path,
    dir: &Path,
    asked: Option<&[BenchContainment]>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<BenchContainment>> {
    let mut wanted = Vec::new();
    for &c in asked.unwrap_or(&[BenchContainment::Cgroup, BenchContainment::ProcessGroup]) {
        if !wanted.contains(&c) {
            wanted.push(c);
        }
    }
    if !wanted.contains(&BenchContainment::Cgroup) {
        return Ok(wanted);
    }
    std::fs::create_dir_all(dir)?;
    let mut child = ManagerChild::spawn(
        exe,
        &[
            "probe".as_ref(),
            "--testd".as_ref(),
            testd.as_os_str(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--containment".as_ref(),
            "cgroup".as_ref(),
        ],
    )?;
    let answer: ProbeMsg = child.recv(Duration::from_secs(60))?;
    child.finish()?;
    if answer.in_force.as_deref() == Some("cgroup") {
        return Ok(wanted);
    }
    let why = answer.error.unwrap_or_else(|| {
        format!(
            "{} in force when cgroup was asked for",
            answer.in_force.as_deref().unwrap_or("nothing")
        )
    });
    if asked.is_some() {
        bail!("--containment cgroup: cgroup containment does not work here: {why}");
    }
    let note = format!(
        "tend measured under process-group containment alone: cgroup containment \
         does not work here ({why})"
    );
    progress(format_args!("{note}"));
    notes.push(note);
    Ok(vec![BenchContainment::ProcessGroup])
}

/// A progress line on stderr.
fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("tend-bench: {message}");
}

/// Kills whatever a phase left behind, after a second for processes that
/// are exiting anyway; anything killed is a leak worth reporting.
fn sweep(phase: &str, notes: &mut Vec<String>) {
    // tend's guard processes exit on their own shortly after their manager.
    cleanup::reap_exiting(Duration::from_secs(1));
    let strays = cleanup::kill_children();
    if strays > 0 {
        notes.push(format!("{phase}: {strays} processes left behind"));
    }
}

/// A manager child and the lines it writes.
pub(crate) struct ManagerChild {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ManagerChild {
    /// Runs `tend-bench manager <args>` with a parent-death signal.
    pub(crate) fn spawn(exe: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Self> {
        let mut command = Command::new(exe);
        command
            .arg("manager")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: the hook runs in the forked child before exec and makes
        // one raw prctl syscall through rustix: no allocation, no lock. It
        // is spawned from the main thread, which lives as long as the run.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
            });
        }
        let mut child = command.spawn().context("spawning the manager role")?;
        let stdin = child.stdin.take().context("manager stdin")?;
        let stdout = child.stdout.take().context("manager stdout")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ManagerChild {
            child,
            stdin,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON line, parsed, within `timeout`.
    pub(crate) fn recv<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let line = self.lines.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                anyhow::anyhow!("the manager role said nothing for {timeout:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => {
                let status = self.child.wait().ok();
                anyhow::anyhow!("the manager role exited ({status:?})")
            }
        })?;
        serde_json::from_str(&line).with_context(|| format!("parsing {line:?}"))
    }

    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the manager role exited with {status}");
        }
        Ok(())
    }
}

fn latency(
    exe: &Path,
    testd: &Path,
    dir: &Path,
    settings: &Settings,
    containments: &[BenchContainment],
) -> anyhow::Result<LatencySamples> {
    std::fs::create_dir_all(dir)?;
    let containment = containments
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(",");
    let reps = settings.reps.to_string();
    let stubborn = settings.stubborn_reps.to_string();
    let grace = settings.grace_ms.to_string();
    let mut child = ManagerChild::spawn(
        exe,
        &[
            "latency".as_ref(),
            "--testd".as_ref(),
            testd.as_os_str(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--reps".as_ref(),
            reps.as_ref(),
            "--stubborn-reps".as_ref(),
            stubborn.as_ref(),
            "--grace-ms".as_ref(),
            grace.as_ref(),
            "--containment".as_ref(),
            containment.as_ref(),
        ],
    )?;
    let cases = containments.len().max(1) as u32;
    let budget = Duration::from_secs(120)
        + Duration::from_millis(50) * settings.reps as u32 * cases
        + Duration::from_millis(settings.grace_ms + 500) * settings.stubborn_reps as u32 * cases;
    let samples = child.recv(budget)?;
    child.finish()?;
    Ok(samples)
}

/// The raw baseline at scale: `n` daemons spawned back to back.
struct RawScale {
    all_listening_ns: i64,
    spawn_calls_ns: i64,
    stop_all_ns: i64,
    check_cpu_us: f64,
}

impl RawScale {
    fn mean(runs: &[RawScale]) -> RawScale {
        let n = runs.len().max(1);
        let mean = |f: fn(&RawScale) -> i64| runs.iter().map(f).sum::<i64>() / n as i64;
        RawScale {
            all_listening_ns: mean(|r| r.all_listening_ns),
            spawn_calls_ns: mean(|r| r.spawn_calls_ns),
            stop_all_ns: mean(|r| r.stop_all_ns),
            check_cpu_us: runs.iter().map(|r| r.check_cpu_us).sum::<f64>() / n as f64,
        }
    }
}

fn raw_scale(testd: &Path, dir: &Path, n: usize) -> anyhow::Result<RawScale> {
    let sockets_dir = dir.join("s");
    std::fs::create_dir_all(&sockets_dir)?;
    let stamps = dir.join("raw.ts");
    let sockets: Vec<PathBuf> = (0..n)
        .map(|i| sockets_dir.join(format!("{i:05}.sock")))
        .collect();
    let t0 = now_ns();
    let daemons = sockets
        .iter()
        .map(|socket| RawDaemon::spawn(testd, socket, &stamps, &[]))
        .collect::<Result<Vec<_>, _>>()
        .context("spawning raw daemons")?;
    let spawn_calls_ns = now_ns() - t0;
    // Looked at seldom, so reading the file takes no CPU from the
    // starting daemons; the figure comes from their stamps.
    let listened = wait_stamps(
        &stamps,
        n,
        Duration::from_millis(5),
        Duration::from_secs(300),
    )?;
    raw::check_all_accepting(&sockets)?;
    let last_listen = listened.iter().map(|s| s.listen_ns).max().unwrap_or(t0);
    let passes = (3000 / n).clamp(1, 30);
    let check_cpu_us = raw::connect_cpu_us(&sockets, passes)?;
    let t0_stop = now_ns();
    for daemon in &daemons {
        daemon.signal(Signal::TERM)?;
    }
    for daemon in daemons {
        daemon.reap()?;
    }
    Ok(RawScale {
        all_listening_ns: last_listen - t0,
        spawn_calls_ns,
        stop_all_ns: now_ns() - t0_stop,
        check_cpu_us,
    })
}

/// One size: raw, then tend under each containment with a raw run after
/// each, so every supervised run is bracketed by raw runs; every
/// containment is compared with the mean of all the raw runs of the size.
fn scale_row(
    exe: &Path,
    testd: &Path,
    dir: &Path,
    n: usize,
    settings: &Settings,
    order: &[BenchContainment],
    notes: &mut Vec<String>,
) -> anyhow::Result<ScaleRow> {
    progress(format_args!("scale n={n}: raw parallel spawn"));
    let mut raws = vec![raw_scale(testd, &dir.join("raw-0"), n)?];
    sweep(&format!("scale {n}, raw run 1"), notes);
    let mut runs = Vec::new();
    for (i, &containment) in order.iter().enumerate() {
        let run = tend_scale(
            exe,
            testd,
            &dir.join(format!("tend-{containment}")),
            n,
            settings,
            containment,
            false,
        );
        sweep(&format!("scale {n}, tend ({containment})"), notes);
        match run {
            Ok(run) => runs.push(run),
            Err(e) => notes.push(format!("size {n}, {containment}: {e:#}")),
        }
        progress(format_args!("scale n={n}: raw parallel spawn again"));
        raws.push(raw_scale(testd, &dir.join(format!("raw-{}", i + 1)), n)?);
        sweep(&format!("scale {n}, raw run {}", i + 2), notes);
    }
    // The same size with TCP health checks, under the first containment:
    // the idle-CPU figure for checks the board makes by TCP connects.
    let tend_tcp = match order.first() {
        Some(&containment) => {
            let run = tend_scale(
                exe,
                testd,
                &dir.join(format!("tcp-{containment}")),
                n,
                settings,
                containment,
                true,
            );
            sweep(&format!("scale {n}, tend tcp ({containment})"), notes);
            match run {
                Ok(run) => Some(run),
                Err(e) => {
                    notes.push(format!("size {n}, tcp checks: {e:#}"));
                    None
                }
            }
        }
        None => None,
    };
    let raw = RawScale::mean(&raws);
    let ms = |ns: i64| ns as f64 / 1e6;
    let tend = runs
        .into_iter()
        .map(|mut r| {
            r.start_ratio = r.all_running_ms / ms(raw.all_listening_ns);
            r.stop_all_over_raw = r.stop_all_ms / ms(raw.stop_all_ns);
            r
        })
        .collect();
    Ok(ScaleRow {
        n,
        raw_all_listening_ms: ms(raw.all_listening_ns),
        raw_all_listening_runs_ms: raws.iter().map(|r| ms(r.all_listening_ns)).collect(),
        raw_spawn_calls_ms: ms(raw.spawn_calls_ns),
        raw_stop_all_ms: ms(raw.stop_all_ns),
        raw_stop_all_runs_ms: raws.iter().map(|r| ms(r.stop_all_ns)).collect(),
        raw_check_cpu_us: raw.check_cpu_us,
        raw_idle_floor_pct: raw.check_cpu_us * n as f64 / (settings.health_ms as f64 * 1e3) * 100.0,
        tend,
        tend_tcp,
    })
}

/// n daemons supervised by a manager process under `containment` (on
/// TCP ports with TCP health checks when `tcp`); the ratios to raw are
/// filled in by the caller.
fn tend_scale(
    exe: &Path,
    testd: &Path,
    tend_dir: &Path,
    n: usize,
    settings: &Settings,
    containment: BenchContainment,
    tcp: bool,
) -> anyhow::Result<TendScaleRow> {
    progress(format_args!(
        "scale n={n}: supervised ({containment}{}), then {} s idle with a {} ms health check",
        if tcp { ", tcp ports and checks" } else { "" },
        settings.idle_secs,
        settings.health_ms
    ));
    std::fs::create_dir_all(tend_dir)?;
    let n_arg = n.to_string();
    let health = settings.health_ms.to_string();
    let mut scale_args: Vec<&std::ffi::OsStr> = Vec::new();
    if tcp {
        scale_args.push("--tcp".as_ref());
    }
    let mut child = ManagerChild::spawn(
        exe,
        &[
            &[
                "scale".as_ref(),
                "--testd".as_ref(),
                testd.as_os_str(),
                "--dir".as_ref(),
                tend_dir.as_os_str(),
                "--n".as_ref(),
                n_arg.as_ref(),
                "--health-ms".as_ref(),
                health.as_ref(),
                "--containment".as_ref(),
                containment.name().as_ref(),
            ],
            scale_args.as_slice(),
        ]
        .concat(),
    )?;
    let pid = child.pid();
    let step = Duration::from_secs(300);
    let ScaleMsg::Ready = child.recv(step)? else {
        bail!("expected the ready message");
    };
    let rss_idle_kib = sys::rss_kib(pid).unwrap_or(0);
    let cpu_ready = sys::cpu_secs(pid).unwrap_or(0.0);
    child.send("go")?;
    let ScaleMsg::Running {
        in_force,
        t0_ns,
        all_started_ns,
        last_running_ns,
        failures,
        first_error,
        list_ns,
    } = child.recv(step)?
    else {
        bail!("expected the running message");
    };
    if failures > 0 {
        bail!(
            "{failures} of {n} starts failed; first: {}",
            first_error.unwrap_or_default()
        );
    }
    let cpu_running = sys::cpu_secs(pid).unwrap_or(0.0);
    let rss_running_kib = sys::rss_kib(pid).unwrap_or(0);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(settings.idle_secs));
    let cpu_idle_end = sys::cpu_secs(pid).unwrap_or(0.0);
    let window = window.elapsed().as_secs_f64();
    let rss_after_idle_kib = sys::rss_kib(pid).unwrap_or(0);
    child.send("report")?;
    let ScaleMsg::Report {
        running,
        restarts,
        failed_health_checks,
    } = child.recv(step)?
    else {
        bail!("expected the report message");
    };
    let hwm_kib = sys::hwm_kib(pid).unwrap_or(0);
    let cpu_before_stop = sys::cpu_secs(pid).unwrap_or(0.0);
    child.send("stop")?;
    let ScaleMsg::Stopped {
        stop_all_ns,
        not_stopped,
    } = child.recv(step)?
    else {
        bail!("expected the stopped message");
    };
    let cpu_stop = sys::cpu_secs(pid).unwrap_or(0.0) - cpu_before_stop;
    child.finish()?;
    let stamps = read_stamps(&tend_dir.join("tend.ts"))?;
    let last_listen = stamps.iter().map(|s| s.listen_ns).max().unwrap_or(0);

    let ms = |ns: i64| ns as f64 / 1e6;
    Ok(TendScaleRow {
        requested: containment,
        in_force,
        all_running_ms: ms(all_started_ns - t0_ns),
        last_listen_ms: ms(last_listen - t0_ns),
        last_running_after_last_listen_ms: ms(last_running_ns - last_listen),
        start_ratio: f64::NAN,
        start_cpu_ms: (cpu_running - cpu_ready) * 1e3,
        rss_idle_kib,
        rss_running_kib,
        rss_after_idle_kib,
        hwm_kib,
        rss_per_daemon_kib: (rss_after_idle_kib.max(rss_running_kib) as f64 - rss_idle_kib as f64)
            / n as f64,
        idle_secs: window,
        idle_cpu_pct: (cpu_idle_end - cpu_running) / window * 100.0,
        running_after_idle: running,
        restarts,
        failed_health_checks,
        stop_all_ms: ms(stop_all_ns),
        stop_all_cpu_ms: cpu_stop * 1e3,
        stop_all_over_raw: f64::NAN,
        not_stopped,
        list: summarize(&list_ns),
    })
}
