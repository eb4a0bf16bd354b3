//! The named defaults of every tunable, in one place.
//!
//! The first seven equal the constants of the system tend reimplements, so a
//! plugin written against it behaves the same under tend.
//!
//! The names are API; the values are behaviour: a release may tune one
//! (and says so in its notes), never remove or retype it.

use std::time::Duration;

/// How long a daemon may take to accept its first connection.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon has between SIGTERM and SIGKILL.
pub const SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Time between two health checks.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long one health check may take to connect.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failed health checks that make tend restart a daemon.
pub const MAX_HEALTH_CHECK_FAILURES: u32 = 3;
/// Restarts in a row before tend gives up and reports `Error`.
pub const MAX_RESTART_ATTEMPTS: u32 = 3;
/// Delay before the first restart; later ones grow exponentially.
pub const RESTART_DELAY: Duration = Duration::from_secs(5);

/// Upper bound of the exponentially growing restart delay.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// Fraction of the restart delay added at random, so daemons that crashed
/// together do not restart in lockstep.
pub const RESTART_JITTER: f64 = 0.1;
/// How long a daemon must stay `Running` before its restart counter resets.
pub const STABLE_PERIOD: Duration = Duration::from_secs(60);

/// Lines of output kept in memory per daemon for `logs` and error messages.
pub const LOG_RING_LINES: usize = 1000;
/// Longest line kept; longer lines are cut so a daemon that never writes a
/// newline cannot make tend buffer without bound.
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;
/// Size at which a log file is rotated to `<file>.1`.
pub const LOG_FILE_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated log files kept besides the live one.
pub const LOG_FILE_KEEP: u32 = 3;
/// Lines of stderr quoted in an error message.
pub const STDERR_TAIL_LINES: usize = 5;

/// How long tend waits for the group to vanish after SIGKILL before it
/// reports the stop as failed (a process stuck in uninterruptible sleep).
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long tend waits, after a daemon exited, for the rest of its output.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Longest duration any setting accepts (a year).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Longest process name.
pub const MAX_NAME_BYTES: usize = 64;

/// Largest event `publish` accepts, as serialized JSON.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Events queued per daemon while it is not reachable.
pub const EVENT_QUEUE_CAPACITY: usize = 1024;
