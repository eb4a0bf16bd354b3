//! Resource limits: the [`Rlimit`]s a config sets on its daemon, and the
//! manager's own open-file limit.
//!
//! The manager raises its own soft `RLIMIT_NOFILE` to
//! the hard limit, as systemd does, since it holds several descriptors per
//! daemon (two output pipes, a pidfd, connections) and the usual soft
//! limit of 1,024 would cap it at a few hundred daemons. Daemons get the
//! original soft limit back before `execve` (see [`super::spawn`]'s child
//! setup): a program that uses `select()` breaks on descriptors above
//! 1,023, which is why systemd, too, hands its services 1,024.

use std::{fmt, str::FromStr, sync::OnceLock};

/// A resource a daemon's limit can be set for (`setrlimit(2)`); each is
/// named in configs as its `RLIMIT_` constant without the prefix, in lower
/// case (`nofile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rlimit {
    /// Address space, in bytes (`RLIMIT_AS`).
    As,
    /// Largest core dump, in bytes; `0` turns core dumps off
    /// (`RLIMIT_CORE`).
    Core,
    /// CPU time, in seconds (`RLIMIT_CPU`).
    Cpu,
    /// Data segment, in bytes (`RLIMIT_DATA`).
    Data,
    /// Largest file the daemon may write, in bytes (`RLIMIT_FSIZE`).
    Fsize,
    /// Locked memory, in bytes (`RLIMIT_MEMLOCK`).
    Memlock,
    /// Bytes in POSIX message queues (`RLIMIT_MSGQUEUE`).
    Msgqueue,
    /// Ceiling of the nice value, as `20 - limit` (`RLIMIT_NICE`).
    Nice,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    Nofile,
    /// Processes and threads of the daemon's *user*, machine-wide
    /// (`RLIMIT_NPROC`).
    Nproc,
    /// Real-time priority ceiling (`RLIMIT_RTPRIO`).
    Rtprio,
    /// Real-time CPU time without a blocking call, in microseconds
    /// (`RLIMIT_RTTIME`).
    Rttime,
    /// Queued signals (`RLIMIT_SIGPENDING`).
    Sigpending,
    /// Main thread's stack, in bytes (`RLIMIT_STACK`).
    Stack,
}

impl Rlimit {
    /// Every resource, in the order of their names.
    pub const ALL: [Rlimit; 14] = [
        Rlimit::As,
        Rlimit::Core,
        Rlimit::Cpu,
        Rlimit::Data,
        Rlimit::Fsize,
        Rlimit::Memlock,
        Rlimit::Msgqueue,
        Rlimit::Nice,
        Rlimit::Nofile,
        Rlimit::Nproc,
        Rlimit::Rtprio,
        Rlimit::Rttime,
        Rlimit::Sigpending,
        Rlimit::Stack,
    ];

    /// The name in configs: `nofile`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rlimit::As => "as",
            Rlimit::Core => "core",
            Rlimit::Cpu => "cpu",
            Rlimit::Data => "data",
            Rlimit::Fsize => "fsize",
            Rlimit::Memlock => "memlock",
            Rlimit::Msgqueue => "msgqueue",
            Rlimit::Nice => "nice",
            Rlimit::Nofile => "nofile",
            Rlimit::Nproc => "nproc",
            Rlimit::Rtprio => "rtprio",
            Rlimit::Rttime => "rttime",
            Rlimit::Sigpending => "sigpending",
            Rlimit::Stack => "stack",
        }
    }

    /// The kernel's resource number.
    pub(crate) fn resource(self) -> libc::c_int {
        // The libc constants are u32 on glibc and i32 elsewhere.
        (match self {
            Rlimit::As => libc::RLIMIT_AS,
            Rlimit::Core => libc::RLIMIT_CORE,
            Rlimit::Cpu => libc::RLIMIT_CPU,
            Rlimit::Data => libc::RLIMIT_DATA,
            Rlimit::Fsize => libc::RLIMIT_FSIZE,
            Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
            Rlimit::Msgqueue => libc::RLIMIT_MSGQUEUE,
            Rlimit::Nice => libc::RLIMIT_NICE,
            Rlimit::Nofile => libc::RLIMIT_NOFILE,
            Rlimit::Nproc => libc::RLIMIT_NPROC,
            Rlimit::Rtprio => libc::RLIMIT_RTPRIO,
            Rlimit::Rttime => libc::RLIMIT_RTTIME,
            Rlimit::Sigpending => libc::RLIMIT_SIGPENDING,
            Rlimit::Stack => libc::RLIMIT_STACK,
        }) as libc::c_int
    }
}

impl fmt::Display for Rlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Rlimit {
    type Err = String;

    /// Parses a name as [`Rlimit::as_str`] gives it.
    fn from_str(name: &str) -> Result<Self, String> {
        Rlimit::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Rlimit::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "{name:?} is not a resource limit; one of {} is",
                    names.join(", ")
                )
            })
    }
}

/// The soft and hard value of one resource limit; `None` is unlimited
/// (`RLIM_INFINITY`). The soft limit is what the kernel enforces; the
/// daemon may raise it up to the hard one, and lower the hard one, never
/// raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RlimitValue {
    /// The limit enforced.
    pub soft: Option<u64>,
    /// The ceiling of the soft limit.
    pub hard: Option<u64>,
}

impl RlimitValue {
    /// Soft and hard limit both `limit`.
    pub fn both(limit: Option<u64>) -> Self {
        RlimitValue {
            soft: limit,
            hard: limit,
        }
    }

    /// Whether the soft limit is at most the hard one, as the kernel
    /// requires.
    pub fn is_ordered(self) -> bool {
        match (self.soft, self.hard) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(soft), Some(hard)) => soft <= hard,
        }
    }

    /// As the kernel takes it.
    pub(crate) fn raw(self) -> libc::rlimit64 {
        let raw = |limit: Option<u64>| limit.unwrap_or(libc::RLIM64_INFINITY);
        libc::rlimit64 {
            rlim_cur: raw(self.soft),
            rlim_max: raw(self.hard),
        }
    }
}

/// The soft limit the process had before tend raised it; `None` when tend
/// did not raise it (it was already at the hard limit, or raising failed),
/// so daemons inherit the limit unchanged.
static ORIGINAL_SOFT: OnceLock<Option<u64>> = OnceLock::new();

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once per process
/// (further calls do nothing). Logs at debug what it did.
pub(crate) fn raise_nofile() {
    ORIGINAL_SOFT.get_or_init(|| {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let (Some(soft), hard) = (limit.current, limit.maximum) else {
            tracing::debug!("RLIMIT_NOFILE soft limit is unlimited; left as it is");
            return None;
        };
        // An unlimited hard limit cannot be the soft one for files (the
        // kernel caps it at fs.nr_open): go to nr_open then.
        let target = match hard {
            Some(hard) => hard,
            None => nr_open().unwrap_or(soft),
        };
        if target <= soft {
            tracing::debug!(soft, "RLIMIT_NOFILE soft limit is already the hard limit");
            return None;
        }
        let raised = Rlimit {
            current: Some(target),
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(
                    from = soft,
                    to = target,
                    "raised the RLIMIT_NOFILE soft limit; daemons get {soft} back"
                );
                Some(soft)
            }
            Err(e) => {
                tracing::debug!(soft, target, error = %e, "cannot raise the RLIMIT_NOFILE soft limit");
                None
            }
        }
    });
}

/// The soft `RLIMIT_NOFILE` a daemon is to start with, when it differs
/// from the manager's own: the soft limit from before tend raised it.
pub(crate) fn daemon_nofile_soft() -> Option<u64> {
    ORIGINAL_SOFT.get().copied().flatten()
}

/// `fs.nr_open`, the most descriptors a process may have.
fn nr_open() -> Option<u64> {
    std::fs::read("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| std::str::from_utf8(&text).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{Resource, getrlimit};

    #[test]
    fn raises_the_soft_limit_to_the_hard_one_and_remembers_the_old_one() {
        let before = getrlimit(Resource::Nofile);
        raise_nofile();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.maximum, before.maximum, "the hard limit is unchanged");
        match daemon_nofile_soft() {
            // Raised here, or by an earlier test of this process.
            Some(original) => {
                assert!(after.current > Some(original));
                assert!(after.current <= after.maximum.or(Some(u64::MAX)));
            }
            None => assert_eq!(after.current, before.current),
        }
        // Idempotent.
        raise_nofile();
        assert_eq!(getrlimit(Resource::Nofile).current, after.current);
    }
}
