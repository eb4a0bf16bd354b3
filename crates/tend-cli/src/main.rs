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
mod memory;
mod notify;
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
#[command(
    name = "tend",
    version,
    about,
    propagate_version = true,
    after_help = "See `tend --help` for examples, exit codes and environment variables.",
    after_long_help = LONG_HELP
)]
struct Cli {
    /// The config file (default: ./tend.toml). Client commands find the
    /// supervisor through its state directory. Accepted before or after
    /// the command.
    #[arg(short, long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The text after `tend --help` (and in the man page).
const LONG_HELP: &str = "\
Examples:
  tend up                         run ./tend.toml in the foreground
  tend -c dev.toml up             another config (-c before or after the command)
  tend status                     the daemons' table; --json for scripts
  tend top                        a live view; q or Ctrl-C quits
  tend logs api -f                follow one daemon's output
  tend call api ping '{}'         call a JSON-RPC method of a daemon
  tend down                       stop everything
  tend completions bash > /etc/bash_completion.d/tend
  tend man > /usr/local/share/man/man1/tend.1

Exit codes:
  0  success: the requested end state holds
  1  the operation failed (a daemon did not start, no supervisor runs, ...)
  2  usage or config error

Environment:
  TEND_CONTAINMENT  `tend up`: cgroup or process-group, overriding the config
  TEND_GUARD        `tend up`: 0 turns off the guard that stops the daemons
                    when tend up is killed (for a service manager that kills
                    the whole cgroup itself)
  TEND_LOG          tend's own diagnostics on stderr (default warn; info, debug)
  NOTIFY_SOCKET     `tend up` under systemd (Type=notify): READY=1 once every
                    daemon started at `up` is running, STATUS= as states
                    change, STOPPING=1 at shutdown
  NO_COLOR          no colour, even on a terminal
  XDG_RUNTIME_DIR   where the default state directory goes

See docs/CLI.md for the config file and every command.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemons of a config in the foreground and supervise them
    /// until SIGINT, SIGTERM or `tend down` (SIGHUP reloads the file).
    Up {
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
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Exit with 1 unless every daemon (or NAME) is running: a probe
        /// for scripts and container health checks.
        #[arg(long)]
        check: bool,
        /// A live view, redrawn as states change: the same as `tend top`.
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        target: SupervisorArgs,
    },
    /// A live view of the daemons, redrawn as their states change; q or
    /// Ctrl-C quits.
    Top(SupervisorArgs),
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
    Check,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `tend man | man -l -`.
    Man,
}

/// How a client command finds the supervisor.
#[derive(Debug, Clone, Args)]
pub struct SupervisorArgs {
    /// The global `-c FILE`, copied here before the command runs.
    #[arg(skip)]
    config: Option<PathBuf>,
    /// The supervisor's control socket (instead of -c FILE).
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

impl Command {
    /// How this command finds the supervisor, for the client commands.
    fn target_mut(&mut self) -> Option<&mut SupervisorArgs> {
        match self {
            Command::Status { target, .. }
            | Command::Logs { target, .. }
            | Command::Call { target, .. }
            | Command::Publish { target, .. }
            | Command::Top(target)
            | Command::Reload(target)
            | Command::Down(target) => Some(target),
            Command::Start(args) | Command::Stop(args) | Command::Restart(args) => {
                Some(&mut args.target)
            }
            Command::Up { .. } | Command::Check | Command::Completions { .. } | Command::Man => {
                None
            }
        }
    }
}

fn main() -> ExitCode {
    // First, while this is the only thread.
    let notify_socket = notify::take_notify_socket();
    let mut cli = Cli::parse();
    if let Some(target) = cli.command.target_mut() {
        target.config.clone_from(&cli.config);
    }
    init_tracing();
    match run(cli.command, cli.config, notify_socket) {
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

fn run(
    command: Command,
    config: Option<PathBuf>,
    notify_socket: Option<std::ffi::OsString>,
) -> Result<(), Failure> {
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    match command {
        Command::Completions { shell } => return commands::docs::completions(shell),
        Command::Man => return commands::docs::man(),
        _ => {}
    }
    if let Command::Up { .. } = command {
        memory::tune_allocator();
    }
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
                names,
                exit_on_failure,
            } => commands::up::run(&config, &names, exit_on_failure, notify_socket).await,
            Command::Check => commands::check::run(&config),
            Command::Status {
                name,
                json: _,
                watch: true,
                target,
                ..
            } => commands::top::run(&target, name).await,
            Command::Top(target) => commands::top::run(&target, None).await,
            Command::Status {
                name,
                json,
                check,
                target,
                ..
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
            Command::Completions { .. } | Command::Man => Ok(()),
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
