//! The open-file limit: the manager raises its own soft `RLIMIT_NOFILE` to
//! the hard limit, as systemd does, since it holds several descriptors per
//! daemon (two output pipes, a pidfd, connections) and the usual soft
//! limit of 1,024 would cap it at a few hundred daemons. Daemons get the
//! original soft limit back before `execve` (see [`super::spawn`]'s child
//! setup): a program that uses `select()` breaks on descriptors above
//! 1,023, which is why systemd, too, hands its services 1,024.

use std::sync::OnceLock;

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
