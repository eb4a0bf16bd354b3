//! Readiness notice latency by kind: how long after the daemon is ready
//! tend says `Running`, for the Unix socket, a TCP port and the systemd
//! notify protocol, and for a socket or port that listens 300 ms after it
//! was bound (the uvicorn `--workers` case).
//!
//! Every figure runs from a daemon-side clock to the `time` of tend's
//! `Running` event (both CLOCK_REALTIME): `testd --timestamps` stamps right
//! after `listen()` returned; `testd --notify-stamp` right before the
//! `sendmsg` of `READY=1`. One manager (the first containment measured)
//! starts and stops one daemon per repetition; kinds alternate within a
//! round.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tend::{BackgroundProcessConfig, ProcessState, Readiness, TcpProbe};
use tokio::runtime::Runtime;

use crate::{
    BenchContainment,
    manager_role::{emit, manager_for, next_event, next_stamp},
    stats::{Summary, summarize},
};

/// The bind→listen gap of the late-listen figures, ms.
pub const LISTEN_GAP_MS: u64 = 300;

/// Arguments of `manager readiness`.
#[derive(Debug, Clone, Args)]
pub struct ReadinessArgs {
    /// The test daemon.
    #[arg(long)]
    pub testd: PathBuf,
    /// Scratch directory (short, for socket paths).
    #[arg(long)]
    pub dir: PathBuf,
    /// Repetitions of the immediate kinds.
    #[arg(long)]
    pub reps: usize,
    /// Repetitions of the late-listen kinds (each takes the gap).
    #[arg(long)]
    pub gap_reps: usize,
    /// The containment to ask for.
    #[arg(long, value_enum)]
    pub containment: BenchContainment,
}

/// Samples in nanoseconds, from the daemon's stamp to `Running`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReadinessSamples {
    /// The containment in force.
    pub in_force: Option<String>,
    /// Unix socket: `listen()` → `Running`.
    pub socket_listen_to_running: Vec<i64>,
    /// TCP port: `listen()` → `Running`.
    pub tcp_listen_to_running: Vec<i64>,
    /// Notify: right before `sendmsg(READY=1)` → `Running`.
    pub notify_send_to_running: Vec<i64>,
    /// Unix socket listening 300 ms after its bind: `listen()` → `Running`.
    pub socket_gap_listen_to_running: Vec<i64>,
    /// TCP port listening 300 ms after its bind: `listen()` → `Running`.
    pub tcp_gap_listen_to_running: Vec<i64>,
}

/// A loopback port free right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `manager readiness` role.
pub fn role(runtime: &Runtime, args: &ReadinessArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir)?;
    let manager = manager_for(dir, args.containment);
    let mut events = manager.subscribe();
    let mut samples = ReadinessSamples::default();
    let stamps = dir.join("r.ts");
    let notify_stamps = dir.join("n.ts");
    let socket = dir.join("r.sock");
    let stamp_arg = ["--timestamps".to_owned(), stamps.display().to_string()];
    // Starts `config` (named `r`), returns ready → `Running`, stops it.
    let mut one = |config: BackgroundProcessConfig, notify: bool| {
        let file = if notify { &notify_stamps } else { &stamps };
        let seen = count_lines(file);
        runtime.block_on(async {
            manager.start_process(config).await?;
            let running = next_event(&mut events, "r", ProcessState::Running).await?;
            let ready = if notify {
                wait_line(file, seen)?
            } else {
                next_stamp(file, seen, Duration::from_micros(200))?.listen_ns
            };
            manager.stop_process("r").await?;
            anyhow::Ok(running - ready)
        })
    };
    let base = |extra: &[&str]| {
        BackgroundProcessConfig::new("r", &args.testd)
            .args(
                stamp_arg
                    .iter()
                    .map(String::as_str)
                    .chain(extra.iter().copied()),
            )
            .startup_timeout(Duration::from_secs(30))
    };
    let tcp = |address: &str| -> anyhow::Result<Readiness> {
        Ok(Readiness::Tcp(
            TcpProbe::parse(address).map_err(anyhow::Error::msg)?,
        ))
    };
    // Round 0 warms up and is not recorded.
    for round in 0..=args.reps {
        let record = round > 0;
        let s = one(base(&[]).socket_path(&socket), false)?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let t = one(base(&["--tcp", &address]).readiness(tcp(&address)?), false)?;
        let notify_config = BackgroundProcessConfig::new("r", &args.testd)
            .args(["--notify", "--notify-stamp"])
            .args([notify_stamps.as_os_str()])
            .readiness(Readiness::Notify);
        let n = one(notify_config, true)?;
        if record {
            samples.socket_listen_to_running.push(s);
            samples.tcp_listen_to_running.push(t);
            samples.notify_send_to_running.push(n);
        }
    }
    let gap = LISTEN_GAP_MS.to_string();
    for _ in 0..args.gap_reps {
        let late_socket = base(&["--listen-delay", &gap]).socket_path(&socket);
        samples
            .socket_gap_listen_to_running
            .push(one(late_socket, false)?);
        let address = format!("127.0.0.1:{}", free_port()?);
        let late_tcp = base(&["--tcp", &address, "--listen-delay", &gap]).readiness(tcp(&address)?);
        samples
            .tcp_gap_listen_to_running
            .push(one(late_tcp, false)?);
    }
    samples.in_force = manager.containment().map(|c| c.to_string());
    runtime.block_on(manager.stop_all_processes());
    emit(&samples)
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.matches('\n').count())
}

/// The number on line `index` of `path`, once it is there.
fn wait_line(path: &Path, index: usize) -> anyhow::Result<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(line) = complete.lines().nth(index) {
            return line
                .trim()
                .parse()
                .with_context(|| format!("stamp {line:?}"));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no notify stamp {index} in {path:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `manager readiness` under `containment` and summarises it.
pub fn measure(
    exe: &Path,
    testd: &Path,
    dir: &Path,
    reps: usize,
    gap_reps: usize,
    containment: BenchContainment,
) -> anyhow::Result<ReadinessSection> {
    std::fs::create_dir_all(dir)?;
    let reps_arg = reps.to_string();
    let gap_arg = gap_reps.to_string();
    let mut child = crate::orchestrate::ManagerChild::spawn(
        exe,
        &[
            "readiness".as_ref(),
            "--testd".as_ref(),
            testd.as_os_str(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--reps".as_ref(),
            reps_arg.as_ref(),
            "--gap-reps".as_ref(),
            gap_arg.as_ref(),
            "--containment".as_ref(),
            containment.name().as_ref(),
        ],
    )?;
    let budget = Duration::from_secs(120)
        + Duration::from_millis(100) * reps as u32
        + Duration::from_millis(2 * LISTEN_GAP_MS + 200) * gap_reps as u32;
    let samples: ReadinessSamples = child.recv(budget)?;
    child.finish()?;
    Ok(ReadinessSection::new(containment, samples))
}

/// The readiness figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessSection {
    /// The containment asked for.
    pub requested: BenchContainment,
    /// The containment in force.
    pub in_force: Option<String>,
    /// Summaries by series name (see [`ReadinessSamples`]).
    pub latency: std::collections::BTreeMap<String, Summary>,
}

impl ReadinessSection {
    /// Summarises `samples`.
    pub fn new(requested: BenchContainment, samples: ReadinessSamples) -> Self {
        let series = [
            (
                "socket_listen_to_running",
                &samples.socket_listen_to_running,
            ),
            ("tcp_listen_to_running", &samples.tcp_listen_to_running),
            ("notify_send_to_running", &samples.notify_send_to_running),
            (
                "socket_gap_listen_to_running",
                &samples.socket_gap_listen_to_running,
            ),
            (
                "tcp_gap_listen_to_running",
                &samples.tcp_gap_listen_to_running,
            ),
        ];
        ReadinessSection {
            requested,
            in_force: samples.in_force.clone(),
            latency: series
                .into_iter()
                .filter_map(|(name, s)| Some((name.to_owned(), summarize(s)?)))
                .collect(),
        }
    }

    /// The markdown section.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut md = format!(
            "\n## Readiness notice latency\n\nMicroseconds from the daemon being ready to \
             tend's `Running` event, one manager ({}), one daemon per repetition. Ready: \
             right after `listen()` returned (socket, tcp), right before the `sendmsg` of \
             `READY=1` (notify). Late listen: the daemon binds, then listens {LISTEN_GAP_MS} ms \
             later.\n\n| Kind | n | median | p99 | max |\n|---|--:|--:|--:|--:|\n",
            self.in_force.as_deref().unwrap_or(self.requested.name())
        );
        for (label, series) in [
            ("Unix socket", "socket_listen_to_running"),
            ("TCP port", "tcp_listen_to_running"),
            ("notify `READY=1`", "notify_send_to_running"),
            ("Unix socket, late listen", "socket_gap_listen_to_running"),
            ("TCP port, late listen", "tcp_gap_listen_to_running"),
        ] {
            if let Some(s) = self.latency.get(series) {
                let _ = writeln!(
                    md,
                    "| {label} | {} | {:.0} | {:.0} | {:.0} |",
                    s.n, s.median_us, s.p99_us, s.max_us
                );
            }
        }
        md
    }
}
