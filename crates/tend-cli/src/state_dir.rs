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
    os::unix::ffi::OsStrExt,
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

    /// The default state directory of the config file `file` (a canonical
    /// path): a folder of its own under the per-user default
    /// ([`tend::default_state_dir`]), named after the config's folder and a
    /// hash of its path, like a docker compose project. So two projects
    /// get two supervisors, and the same file always finds its own.
    pub fn of_project(file: &Path) -> Self {
        StateDir::new(tend::default_state_dir().join(project_key(file)))
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

/// Characters of the folder name kept in a project key: enough to tell
/// projects apart at a glance, short enough for socket paths.
const PROJECT_NAME_CHARS: usize = 20;

/// `myapp-1f2e3d4c5b6a7988`: the config's folder name (cut, with anything
/// but ASCII letters, digits, `.`, `_` and `-` replaced by `_`, since the
/// path may be any bytes) and the first 8 bytes of the SHA-256 of the
/// config's path, which tell apart two `tend.toml` in folders of one name.
fn project_key(file: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    let folder = file
        .parent()
        .and_then(Path::file_name)
        .map(|name| String::from_utf8_lossy(name.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut name: String = folder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(PROJECT_NAME_CHARS)
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, 'p');
    }
    let digest = Sha256::digest(file.as_os_str().as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}-{hash}")
}

/// A state directory opened by [`StateDir::open_private`].
#[derive(Debug)]
pub struct OpenStateDir {
    dir: PrivateDir,
    path: PathBuf,
}

impl OpenStateDir {
    /// Takes the lock that makes this process the only `tend up` of the
    /// directory, and writes its PID and its config file `config` into the
    /// lock file (so a refused `tend up` can name both). The lock is held
    /// until the returned guard is dropped (or the process dies). The lock
    /// file is opened through the directory's descriptor and only if it is
    /// this user's own regular file (never through a symlink).
    pub fn lock(&self, config: &Path) -> Result<SupervisorLock, LockError> {
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
                let mut holder = Vec::new();
                let _ = file.read_to_end(&mut holder);
                let mut lines = holder.split(|&b| b == b'\n');
                let holder_pid = lines
                    .next()
                    .and_then(|pid| std::str::from_utf8(pid).ok())
                    .and_then(|pid| pid.trim().parse().ok());
                let holder_config = lines
                    .next()
                    .filter(|path| !path.is_empty())
                    .map(|path| PathBuf::from(std::ffi::OsStr::from_bytes(path)));
                return Err(LockError::Held {
                    dir: self.path.clone(),
                    holder_pid,
                    holder_config,
                    config: config.to_owned(),
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
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.write_all(config.as_os_str().as_bytes()))
            .and_then(|()| file.write_all(b"\n"));
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
        /// The config file the holder runs, if it wrote one.
        holder_config: Option<PathBuf>,
        /// The config file of the refused `tend up`.
        config: PathBuf,
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
            LockError::Held {
                dir,
                holder_pid,
                holder_config,
                config,
            } => {
                let pid = holder_pid.map_or_else(String::new, |pid| format!(" (pid {pid})"));
                match holder_config {
                    Some(other) if other == config => write!(
                        f,
                        "tend up is already running for {}{pid}; `tend status -c {0}` shows \
                         it, `tend down -c {0}` stops it",
                        config.display()
                    ),
                    Some(other) => write!(
                        f,
                        "another tend up{pid} is already running for state directory {}, \
                         with config {}; stop it with `tend down -c {1}`, or give {} a state \
                         directory of its own with `[settings] state_dir = \"...\"`",
                        dir.display(),
                        other.display(),
                        config.display()
                    ),
                    None => write!(
                        f,
                        "another tend up{pid} is already running for state directory {}; \
                         give {} a state directory of its own with \
                         `[settings] state_dir = \"...\"`",
                        dir.display(),
                        config.display()
                    ),
                }
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
    fn each_config_gets_its_own_default_state_dir() {
        let a = project_key(Path::new("/home/me/shop/tend.toml"));
        let b = project_key(Path::new("/srv/shop/tend.toml"));
        assert!(a.starts_with("shop-") && b.starts_with("shop-"), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, project_key(Path::new("/home/me/shop/tend.toml")));
        let odd = project_key(Path::new("/x/.a b\u{e9}/tend.toml"));
        assert!(odd.starts_with("p.a_b_-"), "{odd}");
        let long = project_key(Path::new(&format!("/{}/tend.toml", "y".repeat(200))));
        assert_eq!(long.len(), PROJECT_NAME_CHARS + 1 + 16);
    }

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
        let err = open
            .lock(Path::new("/a/tend.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep");
    }

    #[test]
    fn second_lock_is_refused_and_names_the_holder() {
        let (_temp, dir) = temp_state_dir();
        let dir = dir.open_private().unwrap();
        let held = dir.lock(Path::new("/a/tend.toml")).unwrap();
        match dir.lock(Path::new("/b/tend.toml")) {
            Err(LockError::Held {
                holder_pid,
                holder_config,
                ..
            }) => {
                assert_eq!(holder_pid, Some(std::process::id()));
                assert_eq!(holder_config.as_deref(), Some(Path::new("/a/tend.toml")));
            }
            other => panic!("expected the lock to be held, got {other:?}"),
        }
        drop(held);
        dir.lock(Path::new("/b/tend.toml"))
            .expect("lock is free again once dropped");
    }
}
