//! `tend`: run a set of plugin daemons from one TOML file, and ask the
//! running supervisor what is going on. See `docs/CLI.md`.

/// Prints a line to stdout, ignoring errors: a closed terminal or pipe
/// must not stop the supervisor, which still has daemons to stop.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Like `say!`, to stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod client;
mod commands;
mod config;
mod deps;
mod environments;
mod failure;
mod protocol;
mod sanitize;
mod server;
mod state_dir;
mod style;
mod table;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::DEFAULT_CONFIG_FILE,
    failure::Failure,
    sanitize::{Layout, escape_controls},
};

/// Supervise plugin daemons that serve Unix sockets.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemons of a config in the foreground and supervise them
    /// until SIGINT, SIGTERM or `tend down` (SIGHUP reloads the file).
    Up {
        #[command(flatten)]
        file: ConfigFileArg,
        /// Start only these daemons (and what they depend on); by default
        /// every daemon without `autostart = false`.
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Stop every daemon and exit with 1 as soon as one cannot start or
        /// ends in error (for CI jobs and containers).
        #[arg(long)]
        exit_on_failure: bool,
    },
    /// Show the daemons' states.
    Status {
        /// Only this daemon.
        name: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Exit with 1 unless every daemon (or NAME) is running: a probe
        /// for scripts and container health checks.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Start a daemon; returns once it is running.
    Start(NameArgs),
    /// Stop a daemon; returns once its processes are gone.
    Stop(NameArgs),
    /// Stop and start a daemon; returns once it is running again.
    Restart(NameArgs),
    /// Print the recent output of a daemon, or of every daemon
    /// interleaved in time order, each line prefixed by its daemon's name.
    /// Reads the log files when no supervisor runs.
    Logs {
        /// The daemon; every daemon when left out.
        name: Option<String>,
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", default_value_t = protocol::DEFAULT_LOG_LINES)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with the time tend read it.
        #[arg(short, long)]
        timestamps: bool,
        /// Print the lines exactly as the daemon wrote them, control
        /// characters and escape sequences included (by default they are
        /// shown escaped, like `\x1b[2J`, so they cannot act on the
        /// terminal).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Call a JSON-RPC method of a daemon and print its result as JSON.
    Call {
        /// The daemon.
        name: String,
        /// The JSON-RPC method.
        method: String,
        /// The params: a JSON object or array; none when left out.
        #[arg(value_name = "PARAMS_JSON")]
        params: Option<String>,
        /// How long to wait for the reply ("500ms", "30s", "2m").
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
        timeout: Duration,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Publish an event to the daemons subscribed to it.
    Publish {
        /// The event name.
        event: String,
        /// The event's data: any JSON value; null when left out.
        #[arg(value_name = "DATA_JSON")]
        data: Option<String>,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// Stop every daemon and the supervisor; returns once it is gone.
    Down(SupervisorArgs),
    /// Reread the config file and apply it: start new daemons, stop
    /// removed ones, restart changed ones, leave the rest running.
    Reload(SupervisorArgs),
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
            // Errors carry daemon-written text (a stderr tail, a JSON-RPC
            // error message): escaped, it cannot act on the terminal.
            let message = format!("{:#}", failure.error);
            say_err!("tend: {}", escape_controls(&message, Layout::Lines));
            failure.exit_code()
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    // `up` supervises with a worker per core; clients need one thread.
    let runtime = match command {
        Command::Up { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async move {
        match command {
            Command::Up {
                file,
                names,
                exit_on_failure,
            } => commands::up::run(&file.config, &names, exit_on_failure).await,
            Command::Check(args) => commands::check::run(&args.config),
            Command::Status {
                name,
                json,
                check,
                target,
            } => commands::status::run(&target, name, json, check).await,
            Command::Start(args) => commands::start::run(&args.target, &args.name).await,
            Command::Stop(args) => commands::stop::run(&args.target, &args.name).await,
            Command::Restart(args) => commands::restart::run(&args.target, &args.name).await,
            Command::Logs {
                name,
                lines,
                follow,
                timestamps,
                raw,
                target,
            } => {
                let options = commands::logs::Options {
                    lines,
                    follow,
                    raw,
                    timestamps,
                };
                commands::logs::run(&target, name.as_deref(), options).await
            }
            Command::Call {
                name,
                method,
                params,
                timeout,
                target,
            } => commands::call::run(&target, &name, &method, params.as_deref(), timeout).await,
            Command::Publish {
                event,
                data,
                target,
            } => commands::publish::run(&target, &event, data.as_deref()).await,
            Command::Down(target) => commands::down::run(&target).await,
            Command::Reload(target) => commands::reload::run(&target).await,
        }
    })
}

/// A `--timeout`: a duration as the config file writes it (`"5s"`, or an
/// integer of milliseconds), not zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = match text.trim().parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => config::duration::parse_duration(text)?,
    };
    if timeout.is_zero() {
        Err("must be greater than zero".into())
    } else {
        Ok(timeout)
    }
}

/// Diagnostics go to stderr, filtered by `TEND_LOG` (default `warn`, less
/// the library's "giving up" warning, which repeats the event line `tend
/// up` prints for the same failure), coloured only on a terminal and
/// without `NO_COLOR`.
///
/// Their fields may carry daemon-written text (a stderr tail in an error),
/// and the subscriber's own escaping lets carriage returns and newlines
/// through, so every field is escaped here like the rest of tend's
/// human-readable output.
fn init_tracing() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::field::MakeExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_env("TEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tend::supervisor=error"));
    let escaped_fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text, Layout::Line);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(style::wanted(std::io::stderr().is_terminal()))
        .fmt_fields(escaped_fields)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_durations_or_milliseconds() {
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("250"), Ok(Duration::from_millis(250)));
        for bad in ["0", "0s", "soon", "-5", "1.5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
