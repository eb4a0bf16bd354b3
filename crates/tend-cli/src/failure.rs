//! How a command fails, and the exit code that tells it: 1 when the
//! operation failed, 2 for a usage or config error.

use std::process::ExitCode;

/// A failed command: what went wrong and which exit code says so.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

/// Exit code of a command whose operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a usage or config error.
pub const EXIT_USAGE: u8 = 2;

impl Failure {
    /// A usage or config error (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }

    /// The exit code to end the process with.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// Any other error means the operation failed (exit 1).
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: EXIT_FAILED,
            error: error.into(),
        }
    }
}

/// The result of a command.
pub type CommandResult = Result<(), Failure>;
