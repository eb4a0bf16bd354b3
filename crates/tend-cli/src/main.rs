//! `tend`: run a set of plugin daemons from one TOML file, and ask the
//! running supervisor what is going on. See `docs/CLI.md`.

mod client;
mod commands;
mod config;
mod failure;
mod protocol;
mod server;
mod state_dir;
mod table;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{config::DEFAULT_CONFIG_FILE, failure::Failure};

/// Supervise plugin daemons that serve Unix sockets.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every daemon of a config in the foreground and supervise them
    /// until SIGINT, SIGTERM or `tend down`.
    Up(ConfigFileArg),
    /// Show the daemons' states.
    Status {
        /// Only this daemon.
        name: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Start a daemon; returns once it is running.
    Start(NameArgs),
    /// Stop a daemon; returns once its processes are gone.
    Stop(NameArgs),
    /// Stop and start a daemon; returns once it is running again.
    Restart(NameArgs),
    /// Print a daemon's recent output.
    Logs {
        /// The daemon.
        name: String,
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", default_value_t = protocol::DEFAULT_LOG_LINES)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Stop every daemon and the supervisor; returns once it is gone.
    Down(SupervisorArgs),
    /// Validate a config without starting anything.
    Check(ConfigFileArg),
}

/// The config file of `up` and `check`.
#[derive(Debug, Args)]
struct ConfigFileArg {
    /// The config file.
    #[arg(short, long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
    config: PathBuf,
}

/// How a client command finds the supervisor.
#[derive(Debug, Clone, Args)]
pub struct SupervisorArgs {
    /// The config file of the supervisor (default: ./tend.toml); its state
    /// directory holds the control socket.
    #[arg(short, long = "config", value_name = "FILE", conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The supervisor's control socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// A client command on one daemon.
#[derive(Debug, Args)]
struct NameArgs {
    /// The daemon.
    name: String,
    #[command(flatten)]
    target: SupervisorArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tend: {:#}", failure.error);
            failure.exit_code()
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    // `up` supervises with a worker per core; clients need one thread.
    let runtime = match command {
        Command::Up(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async move {
        match command {
            Command::Up(args) => commands::up::run(&args.config).await,
            Command::Check(args) => commands::check::run(&args.config),
            Command::Status { name, json, target } => {
                commands::status::run(&target, name, json).await
            }
            Command::Start(args) => commands::start::run(&args.target, &args.name).await,
            Command::Stop(args) => commands::stop::run(&args.target, &args.name).await,
            Command::Restart(args) => commands::restart::run(&args.target, &args.name).await,
            Command::Logs {
                name,
                lines,
                follow,
                target,
            } => commands::logs::run(&target, &name, lines, follow).await,
            Command::Down(target) => commands::down::run(&target).await,
        }
    })
}

/// Diagnostics go to stderr, filtered by `TEND_LOG` (default `warn`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
