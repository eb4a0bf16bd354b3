//! The state directory of one `tend up`: where its control socket, its lock,
//! the library's orphan records and (by default) daemon logs and sockets live.
//!
//! Everything in it is trusted (the lock names the running supervisor, the
//! environments hold the interpreters daemons run), so `tend up` opens it
//! once as a [`PrivateDir`]: never through a symlink, refused unless this
//! user owns it, restricted to 0700 on the descriptor. The lock and the
//! `logs` folder are then reached through that descriptor and refused
//! unless they are this user's own; nothing another user planted there is
//! adopted. The default location (`/dev/shm/tend-<uid>`) is a name any
//! local user can take first: they get a refusal that names the path, not
//! our trust.

use std::{
    fmt, fs,
    io::{self, Read, Seek, Write},
    path::{Path, PathBuf},
};

use rustix::fs::FlockOperation;
use tend::private_dir::{FileMode, PrivateDir};

/// File name of the control socket inside the state directory.
const CONTROL_SOCKET_NAME: &str = "tend.sock";
/// File name of the lock that allows one `tend up` per state directory.
const LOCK_FILE_NAME: &str = "tend.lock";
/// Folder (inside the state directory) of the daemons' default log files.
const LOGS_DIR_NAME: &str = "logs";

/// A state directory path and the files tend keeps in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory at `path` (nothing is created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir { path: path.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The supervisor's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET_NAME)
    }

    /// The lock file held by the running `tend up`.
    #[cfg(test)]
    pub fn lock_file(&self) -> PathBuf {
        self.path.join(LOCK_FILE_NAME)
    }

    /// The default log file of daemon `name`.
    pub fn default_log_file(&self, name: &str) -> PathBuf {
        self.path.join(LOGS_DIR_NAME).join(format!("{name}.log"))
    }

    /// Opens the directory, creating it (and its parents) if needed:
    /// refused when it is a symlink or another user's, restricted to 0700
    /// when it is ours. Its `logs` folder is opened (or created) the same
    /// way.
    pub fn open_private(&self) -> io::Result<OpenStateDir> {
        let dir = PrivateDir::open_or_create(&self.path)?;
        dir.subdir(LOGS_DIR_NAME)?;
        Ok(OpenStateDir {
            dir,
            path: self.path.clone(),
        })
    }
}

/// A state directory opened by [`StateDir::open_private`].
#[derive(Debug)]
pub struct OpenStateDir {
    dir: PrivateDir,
    path: PathBuf,
}

impl OpenStateDir {
    /// Takes the lock that makes this process the only `tend up` of the
    /// directory, and writes its PID into the lock file. The lock is held
    /// until the returned guard is dropped (or the process dies). The lock
    /// file is opened through the directory's descriptor and only if it is
    /// this user's own regular file (never through a symlink).
    pub fn lock(&self) -> Result<SupervisorLock, LockError> {
        let path = self.path.join(LOCK_FILE_NAME);
        let mut file = self
            .dir
            .open_file(LOCK_FILE_NAME, FileMode::ReadWrite)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    dir: self.path.clone(),
                    holder_pid: holder.trim().parse().ok(),
                });
            }
            Err(errno) => {
                return Err(LockError::Io {
                    path,
                    source: errno.into(),
                });
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|source| LockError::Io { path, source })?;
        Ok(SupervisorLock { _file: file })
    }
}

/// Proof that this process holds a state directory's lock; dropping it
/// releases the lock.
#[derive(Debug)]
pub struct SupervisorLock {
    _file: fs::File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another `tend up` holds it.
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The PID the holder wrote into the lock file, if readable.
        holder_pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { dir, holder_pid } => {
                write!(
                    f,
                    "another tend up is already running for {}",
                    dir.display()
                )?;
                if let Some(pid) = holder_pid {
                    write!(f, " (pid {pid})")?;
                }
                Ok(())
            }
            LockError::Io { path, source } => {
                write!(f, "cannot lock {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state_dir() -> (tempfile::TempDir, StateDir) {
        let temp = tempfile::Builder::new()
            .prefix("ts")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = StateDir::new(temp.path().join("state"));
        (temp, dir)
    }

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private() {
        let (_temp, dir) = temp_state_dir();
        dir.open_private().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(LOGS_DIR_NAME)), 0o700);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let (temp, dir) = temp_state_dir();
        let open = dir.open_private().unwrap();
        let precious = temp.path().join("precious");
        fs::write(&precious, "keep").unwrap();
        std::os::unix::fs::symlink(&precious, dir.lock_file()).unwrap();
        let err = open.lock().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep");
    }

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let (_temp, dir) = temp_state_dir();
        let dir = dir.open_private().unwrap();
        let held = dir.lock().unwrap();
        match dir.lock() {
            Err(LockError::Held { holder_pid, .. }) => {
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        drop(held);
        dir.lock().expect("lock is free again once dropped");
    }
}
