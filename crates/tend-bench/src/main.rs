//! `tend-bench`: measures tend against a raw, unsupervised baseline in the
//! same run, and prints ratios, so the figures mean something on a noisy
//! shared machine.
//!
//! Build the binaries it drives, then run it:
//!
//! ```text
//! cargo build --release -p testd -p tend-cli -p tend-bench
//! cargo run --release -p tend-bench -- [--smoke] [--sizes 10,100,1000]
//! ```
//!
//! `testd` (and `tend`, for the CLI figures) are found next to this
//! executable. Results go to `--out` (default `target/bench/`) as
//! `results.json` and `results.md`; the markdown is also printed.
//!
//! # Method
//! - **Daemon-side clocks.** Every daemon is `testd --timestamps FILE`,
//!   which appends `<start_ns> <listen_ns>` (CLOCK_REALTIME) right after
//!   `listen()`. Latencies are measured from those stamps and from the
//!   `time` of tend's [`tend::ProcessEvent`]s (also CLOCK_REALTIME), not
//!   from when an observer happened to notice.
//! - **Raw baseline in the same run.** The same daemons are spawned
//!   directly (`std::process::Command`, stdio to `/dev/null`, own process
//!   group, no supervision). Raw and tend repetitions alternate, so load
//!   from other users of the machine hits both alike. The raw side waits
//!   for readiness with a connect loop (100 µs apart) or by polling the
//!   stamp file; neither affects the figures, which come from the stamps.
//! - **The manager in its own process.** tend runs in a child process (the
//!   hidden `manager` subcommand), so its RSS (`/proc/<pid>/status`) and
//!   CPU time (`/proc/<pid>/stat`) are the manager's alone.
//! - **Exit times from a pidfd.** "The daemon's own exit" is when a pidfd
//!   of the daemon becomes readable, seen by a thread blocked in `poll`.
//!   The raw stop uses the same observer, so its figure is the noise floor
//!   of that method.
//! - **Both containments side by side.** Every supervised figure is taken
//!   under each containment of `--containment` (default: `cgroup` and
//!   `process-group` where a writable cgroup v2 exists). Latency rounds
//!   run raw, then each containment, in an order reversed every round;
//!   each scale size runs raw, tend under one containment, raw, tend under
//!   the other, raw (the first containment alternating between sizes), and
//!   compares both with the mean of all the raw runs of the size. The
//!   manager role builds its manager with the containment asked for and
//!   reports the one in force, which the report shows.
//! - **Nothing leaks.** The benchmark is a child subreaper: whatever its
//!   children leave behind is adopted and killed on exit, on error, on
//!   panic and on SIGINT/SIGTERM/SIGHUP; the manager process dies with the
//!   benchmark (parent-death signal) and tend's daemons die with it.

mod cleanup;
mod cli_path;
mod clock;
mod manager_role;
mod orchestrate;
mod raw;
mod readiness;
mod report;
mod stats;
mod sys;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Command line of `tend-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "tend-bench",
    about = "Benchmark tend against raw, unsupervised daemons"
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    role: Option<Role>,
}

/// Options of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Tiny sizes for CI: 20 repetitions, 10 daemons, a 1 s idle window
    /// (per containment).
    #[arg(long)]
    pub smoke: bool,
    /// Numbers of daemons for the scale and CLI figures.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Repetitions of each latency measurement.
    #[arg(long)]
    pub reps: Option<usize>,
    /// Length of the idle window over which the manager's CPU is measured.
    #[arg(long)]
    pub idle_secs: Option<u64>,
    /// Grace period of the SIGTERM-ignoring daemon, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub grace_ms: u64,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The test daemon (default: `testd` next to this executable).
    #[arg(long)]
    pub testd: Option<PathBuf>,
    /// The tend CLI (default: `tend` next to this executable).
    #[arg(long)]
    pub tend: Option<PathBuf>,
    /// Skip the CLI figures.
    #[arg(long)]
    pub no_cli: bool,
    /// Containments to measure tend under, side by side (default: both
    /// where a writable cgroup v2 exists, else process-group alone).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub containment: Option<Vec<BenchContainment>>,
}

/// A containment tend is measured under; the manager role asks for it
/// explicitly ([`tend::ContainmentChoice`]), never through the environment.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BenchContainment {
    /// Each daemon in a cgroup v2 of its own.
    Cgroup,
    /// Each daemon leading a process group.
    ProcessGroup,
}

impl BenchContainment {
    /// The library's choice for this containment.
    pub fn choice(self) -> tend::ContainmentChoice {
        match self {
            BenchContainment::Cgroup => tend::ContainmentChoice::Cgroup,
            BenchContainment::ProcessGroup => tend::ContainmentChoice::ProcessGroup,
        }
    }

    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            BenchContainment::Cgroup => "cgroup",
            BenchContainment::ProcessGroup => "process-group",
        }
    }
}

impl std::fmt::Display for BenchContainment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Roles the benchmark runs itself in; not for direct use.
#[derive(Debug, Subcommand)]
enum Role {
    /// Runs tend in this process for the orchestrating parent.
    #[command(hide = true)]
    Manager(manager_role::ManagerArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Manager(args)) => manager_role::run(args),
        None => orchestrate::run(cli.run),
    };
    if let Err(e) = result {
        eprintln!("tend-bench: error: {e:#}");
        std::process::exit(1);
    }
}
