//! The `manager` role: tend running in a process of its own, so the parent
//! can read the manager's memory and CPU time without counting its own.
//!
//! - `manager latency` alternates raw and supervised repetitions of start,
//!   crash-restart and stop of one daemon, supervised by one manager per
//!   containment asked for (their order reversed every round), and prints
//!   every sample as one JSON line ([`LatencySamples`]).
//! - `manager scale` starts N daemons under one containment when told,
//!   then answers the parent's commands on stdin (`go`, `report`, `stop`)
//!   with one JSON line each ([`ScaleMsg`]).
//! - `manager probe` starts one daemon under one containment and reports
//!   the containment in force, or why the start failed ([`ProbeMsg`]).
//!
//! Every manager is built with its containment given explicitly
//! ([`tend::ManagerBuilder::containment`]), so `TEND_CONTAINMENT` in the
//! environment changes nothing, and each reports the containment actually
//! in force (`manager.containment()` after its first start).
//!
//! Raw daemons are spawned from the main thread outside any async context;
//! tend's side runs through `block_on` on the same thread, with the
//! runtime's workers doing the supervision.

use std::{
    io::{BufRead, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tend::{BackgroundProcessConfig, BackgroundProcessManager, HealthCheck, ProcessState};
use tokio::runtime::Runtime;

use crate::{
    BenchContainment,
    clock::{now_ns, ns_of, read_stamps, wait_stamps},
    raw::{self, RawDaemon},
    sys::ExitWatch,
};

/// How often the latency loops look at a stamp file that should already
/// be complete (the daemon was seen accepting, or tend said `Running`).
const STAMP_POLL: Duration = Duration::from_micros(200);
/// How often the raw side looks at a stamp file while its daemon starts:
/// seldom, so the polling takes no CPU from the daemon (the figures come
/// from the stamps, not from when they were read).
const RAW_START_POLL: Duration = Duration::from_millis(1);
/// Longest any single step may take before the run is declared broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of the `manager` role.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Latency of start, crash-restart and stop, raw and supervised.
    Latency(LatencyArgs),
    /// N daemons at once, driven step by step by the parent.
    Scale(ScaleArgs),
    /// Which containment is in force when one is asked for.
    Probe(ProbeArgs),
    /// Readiness notice latency by kind.
    Readiness(crate::readiness::ReadinessArgs),
}

/// Arguments of `manager probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The test daemon.
    #[arg(long)]
    pub testd: PathBuf,
    /// Scratch directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The containment to ask for.
    #[arg(long, value_enum)]
    pub containment: BenchContainment,
}

/// The answer of `manager probe`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeMsg {
    /// The containment in force after the start, if it succeeded.
    pub in_force: Option<String>,
    /// Why the start failed, if it did.
    pub error: Option<String>,
}

/// Arguments of `manager latency`.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// The test daemon.
    #[arg(long)]
    pub testd: PathBuf,
    /// Scratch directory (short, for socket paths).
    #[arg(long)]
    pub dir: PathBuf,
    /// Repetitions of the cooperative rounds.
    #[arg(long)]
    pub reps: usize,
    /// Repetitions of the SIGTERM-ignoring stop.
    #[arg(long)]
    pub stubborn_reps: usize,
    /// Grace period of the SIGTERM-ignoring daemon, ms.
    #[arg(long)]
    pub grace_ms: u64,
    /// Containments, one manager each.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub containment: Vec<BenchContainment>,
}

/// Arguments of `manager scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// The test daemon.
    #[arg(long)]
    pub testd: PathBuf,
    /// Scratch directory for this size.
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of daemons.
    #[arg(long)]
    pub n: usize,
    /// Health-check interval, ms.
    #[arg(long)]
    pub health_ms: u64,
    /// The containment to ask for.
    #[arg(long, value_enum)]
    pub containment: BenchContainment,
    /// Serve TCP ports checked by `HealthProbe::Tcp` (ready by tcp)
    /// instead of Unix sockets checked by connect.
    #[arg(long)]
    pub tcp: bool,
}

/// Every latency sample, in nanoseconds: the raw baseline's and, per
/// containment, the supervised daemon's, alternating per repetition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LatencySamples {
    /// The baseline.
    pub raw: RawSamples,
    /// One entry per containment, in the order asked for.
    pub tend: Vec<TendSamples>,
}

/// The supervised samples under one containment.
#[derive(Debug, Serialize, Deserialize)]
pub struct TendSamples {
    /// The containment asked for.
    pub requested: BenchContainment,
    /// The containment the manager reported in force (`None`: no start).
    pub in_force: Option<String>,
    /// The samples.
    pub series: TendSeries,
}

/// Raw samples, in nanoseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RawSamples {
    /// spawn() called → testd's `main` runs.
    pub raw_spawn_to_exec: Vec<i64>,
    /// spawn() called → testd listens.
    pub raw_spawn_to_listen: Vec<i64>,
    /// spawn() called → a connect loop gets through (100 µs polling).
    pub raw_spawn_to_accept: Vec<i64>,
    /// Forking spawn() called → testd's `main` runs.
    pub raw_fork_spawn_to_exec: Vec<i64>,
    /// Forking spawn() called → testd listens.
    pub raw_fork_spawn_to_listen: Vec<i64>,
    /// SIGKILL → reaped → spawned again → the new testd's `main` runs.
    pub raw_kill_to_exec: Vec<i64>,
    /// SIGKILL → reaped → spawned again → the new testd listens.
    pub raw_kill_to_listen: Vec<i64>,
    /// SIGTERM → reaped.
    pub raw_stop: Vec<i64>,
    /// Exit seen on a pidfd → reaped (the observer's noise floor).
    pub raw_stop_after_exit: Vec<i64>,
}

/// Supervised samples under one containment, in nanoseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TendSeries {
    /// `start_process` called → testd's `main` runs.
    pub tend_spawn_to_exec: Vec<i64>,
    /// `start_process` called → testd listens.
    pub tend_spawn_to_listen: Vec<i64>,
    /// testd listens → the `Running` event's time.
    pub tend_listen_to_running: Vec<i64>,
    /// `Running` event → `start_process` returned.
    pub tend_running_to_return: Vec<i64>,
    /// `start_process` called → returned.
    pub tend_start_total: Vec<i64>,
    /// SIGKILL → the new incarnation's `main` runs.
    pub tend_kill_to_exec: Vec<i64>,
    /// SIGKILL → the new incarnation listens.
    pub tend_kill_to_listen: Vec<i64>,
    /// SIGKILL → `Running` again.
    pub tend_kill_to_running: Vec<i64>,
    /// The new incarnation listens → `Running`.
    pub tend_crash_listen_to_running: Vec<i64>,
    /// `stop_process` called → returned (cooperative daemon).
    pub tend_stop_total: Vec<i64>,
    /// Exit seen on a pidfd → `stop_process` returned.
    pub tend_stop_after_exit: Vec<i64>,
    /// Exit seen on a pidfd → the `Stopped` event's time.
    pub tend_stopped_event_after_exit: Vec<i64>,
    /// `stop_process` called → returned, SIGTERM-ignoring daemon.
    pub tend_stubborn_stop_total: Vec<i64>,
    /// Exit (after SIGKILL) seen on a pidfd → `stop_process` returned.
    pub tend_stubborn_after_exit: Vec<i64>,
}

/// One message of `manager scale` to the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum ScaleMsg {
    /// The runtime and the manager exist; nothing is started.
    Ready,
    /// Every `start_process` has returned.
    Running {
        /// The containment in force (`manager.containment()`).
        in_force: Option<String>,
        /// Just before the first `start_process` (ns).
        t0_ns: i64,
        /// When the last `start_process` returned (ns).
        all_started_ns: i64,
        /// The latest time a process became `Running` (ns).
        last_running_ns: i64,
        /// Starts that failed.
        failures: usize,
        /// The first failure, if any.
        first_error: Option<String>,
        /// Durations of `manager.list()` with every daemon running (ns).
        list_ns: Vec<i64>,
    },
    /// The state after the idle window.
    Report {
        /// Processes `Running`.
        running: usize,
        /// Sum of restart counters (restarts during the window).
        restarts: u64,
        /// Sum of consecutive failed health checks.
        failed_health_checks: u64,
    },
    /// `stop_all_processes` has returned.
    Stopped {
        /// Its duration (ns).
        stop_all_ns: i64,
        /// Processes not `Stopped` afterwards.
        not_stopped: usize,
    },
}

/// Runs the `manager` role.
pub fn run(args: ManagerArgs) -> anyhow::Result<()> {
    crate::sys::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    match args.mode {
        Mode::Latency(args) => latency(&runtime, &args),
        Mode::Scale(args) => scale(&runtime, &args),
        Mode::Probe(args) => probe(&runtime, &args),
        Mode::Readiness(args) => crate::readiness::role(&runtime, &args),
    }
}

/// Writes one JSON line to stdout.
pub(crate) fn emit(message: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, message)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Reads the parent's next command and checks it is `expected`.
fn expect_command(expected: &str) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != expected {
        bail!("expected command {expected:?} from the parent, got {line:?}");
    }
    Ok(())
}

/// Waits for the next event that moves `name` to `to`; returns its time.
pub(crate) async fn next_event(
    events: &mut tend::Subscription,
    name: &str,
    to: ProcessState,
) -> anyhow::Result<i64> {
    let wait = async {
        while let Some(event) = events.recv().await {
            // `running -> running` (the first health check passed) is no
            // arrival.
            if event.name == name && event.to == to && event.from != to {
                return Some(ns_of(event.time));
            }
        }
        None
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .with_context(|| format!("no {to} event for {name} within {STEP_TIMEOUT:?}"))?
        .context("the manager's event channel closed")
}

fn sigkill(pid: u32) -> anyhow::Result<()> {
    let pid = Pid::from_raw(pid as i32).context("pid 0")?;
    rustix::process::kill_process(pid, Signal::KILL)?;
    Ok(())
}

/// The next stamp of `path` after the `seen` already there, looking every
/// `poll`.
pub(crate) fn next_stamp(
    path: &Path,
    seen: usize,
    poll: Duration,
) -> anyhow::Result<crate::clock::Stamp> {
    Ok(wait_stamps(path, seen + 1, poll, STEP_TIMEOUT)?[seen])
}

/// A manager built with `containment` asked for explicitly.
pub(crate) fn manager_for(dir: &Path, containment: BenchContainment) -> BackgroundProcessManager {
    BackgroundProcessManager::builder()
        .state_dir(dir.join(format!("state-{containment}")))
        .containment(containment.choice())
        .build()
}

/// What `manager.containment()` says, as the report names it.
fn in_force(manager: &BackgroundProcessManager) -> Option<String> {
    manager.containment().map(|c| c.to_string())
}

fn probe(runtime: &Runtime, args: &ProbeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let manager = manager_for(&args.dir, args.containment);
    let config = BackgroundProcessConfig::new("probe", &args.testd)
        .socket_path(args.dir.join("probe.sock"))
        .startup_timeout(STEP_TIMEOUT);
    let started = runtime.block_on(manager.start_process(config));
    let message = ProbeMsg {
        in_force: in_force(&manager),
        error: started.as_ref().err().map(|e| format!("{e:#}")),
    };
    runtime.block_on(manager.stop_all_processes());
    emit(&message)
}

/// One containment's manager and daemons in the latency role.
struct LatencyCase {
    containment: BenchContainment,
    manager: BackgroundProcessManager,
    events: tend::Subscription,
    coop: BackgroundProcessConfig,
    stamps: PathBuf,
    stubborn: BackgroundProcessConfig,
    series: TendSeries,
}

fn latency(runtime: &Runtime, args: &LatencyArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let testd = &args.testd;
    let grace = Duration::from_millis(args.grace_ms);
    let mut cases: Vec<LatencyCase> = args
        .containment
        .iter()
        .map(|&containment| {
            let manager = manager_for(dir, containment);
            let events = manager.subscribe();
            let stamps = dir.join(format!("lat-{containment}.ts"));
            let coop = BackgroundProcessConfig::new("lat", testd)
                .args(["--timestamps".as_ref(), stamps.as_os_str()])
                .socket_path(dir.join(format!("lat-{containment}.sock")))
                .restart_delay(Duration::ZERO)
                .max_restart_attempts(u32::MAX)
                .startup_timeout(STEP_TIMEOUT);
            let stub_stamps = dir.join(format!("stub-{containment}.ts"));
            let stubborn = BackgroundProcessConfig::new("stubborn", testd)
                .args([
                    "--timestamps".as_ref(),
                    stub_stamps.as_os_str(),
                    "--ignore-sigterm".as_ref(),
                ])
                .socket_path(dir.join(format!("stub-{containment}.sock")))
                .shutdown_grace_period(grace)
                .startup_timeout(STEP_TIMEOUT);
            LatencyCase {
                containment,
                manager,
                events,
                coop,
                stamps,
                stubborn,
                series: TendSeries::default(),
            }
        })
        .collect();
    let raw_socket = dir.join("raw.sock");
    let raw_stamps = dir.join("raw.ts");

    let mut raw_samples = RawSamples::default();
    // Round 0 warms caches (binary pages, dentries, the runtime's threads)
    // and is not recorded.
    for round in 0..=args.reps {
        let record = round > 0;
        let raw = raw_round(testd, &raw_socket, &raw_stamps)?;
        if record {
            raw.record(&mut raw_samples);
        }
        // Raw first, then the containments, in an order reversed every
        // round so neither always follows the raw daemon.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            let case = &mut cases[i];
            let tend = tend_round(runtime, case)?;
            if record {
                tend.record(&mut case.series);
            }
        }
    }
    for rep in 0..args.stubborn_reps {
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            let case = &mut cases[i];
            let manager = &case.manager;
            let stubborn = &case.stubborn;
            let (total, after_exit) = runtime.block_on(async {
                manager.start_process(stubborn.clone()).await?;
                let pid = manager.pid("stubborn")?.context("no pid while running")?;
                let watch = ExitWatch::start(pid)?;
                let t0 = now_ns();
                manager.stop_process("stubborn").await?;
                let returned = now_ns();
                anyhow::Ok((returned - t0, returned - watch.exited_ns()?))
            })?;
            case.series.tend_stubborn_stop_total.push(total);
            case.series.tend_stubborn_after_exit.push(after_exit);
        }
    }
    let mut tend = Vec::new();
    for case in cases {
        runtime.block_on(case.manager.stop_all_processes());
        tend.push(TendSamples {
            requested: case.containment,
            in_force: in_force(&case.manager),
            series: case.series,
        });
    }
    emit(&LatencySamples {
        raw: raw_samples,
        tend,
    })
}

/// One supervised round (start, crash, stop) under one containment.
fn tend_round(runtime: &Runtime, case: &mut LatencyCase) -> anyhow::Result<TendRound> {
    let manager = &case.manager;
    let events = &mut case.events;
    let lat_stamps = &case.stamps;
    let coop = &case.coop;
    runtime.block_on(async {
        let mut t = TendRound::default();
        let seen = read_stamps(lat_stamps)?.len();
        let t0 = now_ns();
        manager.start_process(coop.clone()).await?;
        let returned = now_ns();
        let running = next_event(events, "lat", ProcessState::Running).await?;
        let first = next_stamp(lat_stamps, seen, STAMP_POLL)?;
        t.spawn_to_exec = first.start_ns - t0;
        t.spawn_to_listen = first.listen_ns - t0;
        t.listen_to_running = running - first.listen_ns;
        t.running_to_return = returned - running;
        t.start_total = returned - t0;

        let pid = manager.pid("lat")?.context("no pid while running")?;
        let killed = now_ns();
        sigkill(pid)?;
        let running = next_event(events, "lat", ProcessState::Running).await?;
        let second = next_stamp(lat_stamps, seen + 1, STAMP_POLL)?;
        t.kill_to_exec = second.start_ns - killed;
        t.kill_to_listen = second.listen_ns - killed;
        t.kill_to_running = running - killed;
        t.crash_listen_to_running = running - second.listen_ns;

        let pid = manager.pid("lat")?.context("no pid while running")?;
        let watch = ExitWatch::start(pid)?;
        let t0 = now_ns();
        manager.stop_process("lat").await?;
        let returned = now_ns();
        let stopped = next_event(events, "lat", ProcessState::Stopped).await?;
        let exited = watch.exited_ns()?;
        t.stop_total = returned - t0;
        t.stop_after_exit = returned - exited;
        t.stopped_event_after_exit = stopped - exited;
        anyhow::Ok(t)
    })
}

/// One raw round's samples.
struct RawRound {
    spawn_to_exec: i64,
    spawn_to_listen: i64,
    spawn_to_accept: i64,
    fork_spawn_to_exec: i64,
    fork_spawn_to_listen: i64,
    kill_to_exec: i64,
    kill_to_listen: i64,
    stop: i64,
    stop_after_exit: i64,
}

impl RawRound {
    fn record(self, s: &mut RawSamples) {
        s.raw_spawn_to_exec.push(self.spawn_to_exec);
        s.raw_spawn_to_listen.push(self.spawn_to_listen);
        s.raw_spawn_to_accept.push(self.spawn_to_accept);
        s.raw_fork_spawn_to_exec.push(self.fork_spawn_to_exec);
        s.raw_fork_spawn_to_listen.push(self.fork_spawn_to_listen);
        s.raw_kill_to_exec.push(self.kill_to_exec);
        s.raw_kill_to_listen.push(self.kill_to_listen);
        s.raw_stop.push(self.stop);
        s.raw_stop_after_exit.push(self.stop_after_exit);
    }
}

/// Start, crash-restart (as the simplest supervisor would: SIGKILL, reap,
/// spawn again) and stop of a raw daemon.
fn raw_round(testd: &Path, socket: &Path, stamps: &Path) -> anyhow::Result<RawRound> {
    let seen = read_stamps(stamps)?.len();
    let t0 = now_ns();
    let daemon = RawDaemon::spawn(testd, socket, stamps, &[])?;
    let accepted = raw::wait_accepting(socket, STEP_TIMEOUT)?;
    let first = next_stamp(stamps, seen, STAMP_POLL)?;

    let killed = now_ns();
    daemon.signal(Signal::KILL)?;
    daemon.reap()?;
    let daemon = RawDaemon::spawn(testd, socket, stamps, &[])?;
    let second = next_stamp(stamps, seen + 1, RAW_START_POLL)?;
    raw::wait_accepting(socket, STEP_TIMEOUT)?;

    let watch = ExitWatch::start(daemon.pid())?;
    let t0_stop = now_ns();
    daemon.signal(Signal::TERM)?;
    let reaped = daemon.reap()?;
    let exited = watch.exited_ns()?;

    let t0_fork = now_ns();
    let daemon = RawDaemon::spawn_forked(testd, socket, stamps)?;
    let forked = next_stamp(stamps, seen + 2, RAW_START_POLL)?;
    raw::wait_accepting(socket, STEP_TIMEOUT)?;
    daemon.signal(Signal::TERM)?;
    daemon.reap()?;
    Ok(RawRound {
        spawn_to_exec: first.start_ns - t0,
        spawn_to_listen: first.listen_ns - t0,
        spawn_to_accept: accepted - t0,
        fork_spawn_to_exec: forked.start_ns - t0_fork,
        fork_spawn_to_listen: forked.listen_ns - t0_fork,
        kill_to_exec: second.start_ns - killed,
        kill_to_listen: second.listen_ns - killed,
        stop: reaped - t0_stop,
        stop_after_exit: reaped - exited,
    })
}

/// One supervised round's samples.
#[derive(Default)]
struct TendRound {
    spawn_to_exec: i64,
    spawn_to_listen: i64,
    listen_to_running: i64,
    running_to_return: i64,
    start_total: i64,
    kill_to_exec: i64,
    kill_to_listen: i64,
    kill_to_running: i64,
    crash_listen_to_running: i64,
    stop_total: i64,
    stop_after_exit: i64,
    stopped_event_after_exit: i64,
}

impl TendRound {
    fn record(self, s: &mut TendSeries) {
        s.tend_spawn_to_exec.push(self.spawn_to_exec);
        s.tend_spawn_to_listen.push(self.spawn_to_listen);
        s.tend_listen_to_running.push(self.listen_to_running);
        s.tend_running_to_return.push(self.running_to_return);
        s.tend_start_total.push(self.start_total);
        s.tend_kill_to_exec.push(self.kill_to_exec);
        s.tend_kill_to_listen.push(self.kill_to_listen);
        s.tend_kill_to_running.push(self.kill_to_running);
        s.tend_crash_listen_to_running
            .push(self.crash_listen_to_running);
        s.tend_stop_total.push(self.stop_total);
        s.tend_stop_after_exit.push(self.stop_after_exit);
        s.tend_stopped_event_after_exit
            .push(self.stopped_event_after_exit);
    }
}

fn scale(runtime: &Runtime, args: &ScaleArgs) -> anyhow::Result<()> {
    let manager = manager_for(&args.dir, args.containment);
    let stamps = args.dir.join("tend.ts");
    let sockets = args.dir.join("s");
    std::fs::create_dir_all(&sockets)?;
    let check = HealthCheck::new(
        Duration::from_millis(args.health_ms),
        Duration::from_secs(1),
        3,
    );
    // Distinct free ports: all bound at once, then released.
    let ports: Vec<u16> = if args.tcp {
        let held = (0..args.n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        held.iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?
    } else {
        Vec::new()
    };
    let configs: Vec<BackgroundProcessConfig> = (0..args.n)
        .map(|i| {
            let config = BackgroundProcessConfig::new(format!("d{i:05}"), &args.testd)
                .args(["--timestamps".as_ref(), stamps.as_os_str()])
                .healthcheck(check)
                .startup_timeout(Duration::from_secs(300));
            match ports.get(i) {
                Some(&port) => {
                    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    config
                        .args(["--tcp".to_owned(), address.to_string()])
                        .readiness(tend::Readiness::Tcp(tend::TcpProbe::new(address)))
                        .health_probe(tend::HealthProbe::Tcp(tend::TcpProbe::new(address)))
                }
                None => config.socket_path(sockets.join(format!("{i:05}.sock"))),
            }
        })
        .collect();
    emit(&ScaleMsg::Ready)?;

    expect_command("go")?;
    let t0_ns = now_ns();
    let outcomes = runtime.block_on(async {
        let mut starts = tokio::task::JoinSet::new();
        for config in configs {
            let manager = manager.clone();
            starts.spawn(async move { manager.start_process(config).await });
        }
        starts.join_all().await
    });
    let all_started_ns = now_ns();
    let errors: Vec<String> = outcomes
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    let infos = manager.list();
    let last_running_ns = infos
        .iter()
        .filter_map(|i| i.started_at.map(ns_of))
        .max()
        .unwrap_or(0);
    let list_ns = (0..21)
        .map(|_| {
            let t = std::time::Instant::now();
            let listed = manager.list();
            std::hint::black_box(listed);
            t.elapsed().as_nanos() as i64
        })
        .collect();
    emit(&ScaleMsg::Running {
        in_force: in_force(&manager),
        t0_ns,
        all_started_ns,
        last_running_ns,
        failures: errors.len(),
        first_error: errors.into_iter().next(),
        list_ns,
    })?;

    expect_command("report")?;
    let infos = manager.list();
    emit(&ScaleMsg::Report {
        running: infos
            .iter()
            .filter(|i| i.state == ProcessState::Running)
            .count(),
        restarts: infos.iter().map(|i| u64::from(i.restart_attempts)).sum(),
        failed_health_checks: infos
            .iter()
            .map(|i| u64::from(i.failed_health_checks))
            .sum(),
    })?;

    expect_command("stop")?;
    let t0 = now_ns();
    runtime.block_on(manager.stop_all_processes());
    let stop_all_ns = now_ns() - t0;
    let not_stopped = manager
        .list()
        .iter()
        .filter(|i| i.state != ProcessState::Stopped)
        .count();
    emit(&ScaleMsg::Stopped {
        stop_all_ns,
        not_stopped,
    })
}
