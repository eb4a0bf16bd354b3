//! Running a daemon as another user and group: [`IdOrName`], and the
//! resolution of names to the numeric ids the child sets before `exec`.
//!
//! Names are looked up through the C library (`getpwnam_r`, `getgrnam_r`,
//! `getgrouplist`, by way of `nix`), so NSS sources such as LDAP or
//! systemd's dynamic users count as well as `/etc/passwd`. The lookup
//! happens when a config is validated and again at every spawn (a
//! restart picks up a changed group membership); the child only makes the
//! system calls on the resolved numbers.

use std::{ffi::CString, fmt};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::BackgroundProcessConfig;

/// A user or a group, by name or by numeric id.
///
/// From a string, all digits is an id (`"65534"`), anything else a name,
/// as `chown` reads its argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdOrName {
    /// A numeric uid or gid; it need not have an entry in the user or
    /// group database.
    Id(u32),
    /// A user or group name, looked up in the system's database.
    Name(String),
}

impl From<u32> for IdOrName {
    fn from(id: u32) -> Self {
        IdOrName::Id(id)
    }
}

impl From<&str> for IdOrName {
    fn from(text: &str) -> Self {
        match text.parse::<u32>() {
            Ok(id) if text.bytes().all(|b| b.is_ascii_digit()) => IdOrName::Id(id),
            _ => IdOrName::Name(text.to_owned()),
        }
    }
}

impl From<String> for IdOrName {
    fn from(text: String) -> Self {
        IdOrName::from(text.as_str())
    }
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// The numeric identity a daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups, set with `setgroups` (empty clears the
    /// manager's own).
    pub groups: Vec<u32>,
}

/// A problem with the identity settings, for [`crate::ConfigProblem`].
#[derive(Debug)]
pub(crate) struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl Problem {
    fn new(field: &'static str, message: String) -> Self {
        Problem { field, message }
    }
}

/// The identity `config` asks for, or `None` when it sets neither `user`,
/// `group` nor `supplementary_groups` (the daemon keeps the manager's).
///
/// With `user`, the group defaults to the user's primary group and the
/// supplementary groups are the user's memberships in the group database
/// (as `login` and systemd's `User=` do), plus any listed. Without
/// `user`, the uid stays the manager's and the supplementary groups are
/// exactly the listed ones.
pub(crate) fn resolve(config: &BackgroundProcessConfig) -> Result<Option<Credentials>, Problem> {
    if config.user.is_none() && config.group.is_none() && config.supplementary_groups.is_empty() {
        return Ok(None);
    }
    let user = config.user.as_ref().map(resolve_user).transpose()?;
    let gid = match (&config.group, &user) {
        (Some(group), _) => resolve_group("group", group)?,
        (None, Some((_, Some(entry)))) => entry.gid.as_raw(),
        (None, Some((uid, None))) => {
            return Err(Problem::new(
                "group",
                format!(
                    "user {uid} has no entry in the user database, so it has no primary group; set group as well"
                ),
            ));
        }
        (None, None) => rustix::process::getegid().as_raw(),
    };
    let mut groups = match &user {
        Some((_, Some(entry))) => {
            let name = CString::new(entry.name.as_bytes()).map_err(|_| {
                Problem::new("user", format!("user name {:?} holds a NUL", entry.name))
            })?;
            nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map_err(|e| {
                    Problem::new(
                        "user",
                        format!("cannot list the groups of {:?}: {e}", entry.name),
                    )
                })?
                .into_iter()
                .map(Gid::as_raw)
                .collect()
        }
        _ => Vec::new(),
    };
    for group in &config.supplementary_groups {
        groups.push(resolve_group("supplementary_groups", group)?);
    }
    groups.sort_unstable();
    groups.dedup();
    let uid = match user {
        Some((uid, _)) => uid,
        None => rustix::process::geteuid().as_raw(),
    };
    Ok(Some(Credentials { uid, gid, groups }))
}

/// The uid of `user`, with its database entry where it has one.
fn resolve_user(user: &IdOrName) -> Result<(u32, Option<User>), Problem> {
    let lookup = match user {
        IdOrName::Id(uid) => User::from_uid(Uid::from_raw(*uid)),
        IdOrName::Name(name) => User::from_name(name),
    };
    match (lookup, user) {
        (Ok(Some(entry)), _) => Ok((entry.uid.as_raw(), Some(entry))),
        (Ok(None), IdOrName::Id(uid)) => Ok((*uid, None)),
        (Ok(None), IdOrName::Name(name)) => Err(Problem::new(
            "user",
            format!(
                "no user named {name:?} on this system (`getent passwd {name}` finds none); create it, or give a numeric uid"
            ),
        )),
        (Err(e), _) => Err(Problem::new(
            "user",
            format!("cannot look up user {user}: {e}"),
        )),
    }
}

fn resolve_group(field: &'static str, group: &IdOrName) -> Result<u32, Problem> {
    match group {
        IdOrName::Id(gid) => Ok(*gid),
        IdOrName::Name(name) => match Group::from_name(name) {
            Ok(Some(entry)) => Ok(entry.gid.as_raw()),
            Ok(None) => Err(Problem::new(
                field,
                format!(
                    "no group named {name:?} on this system (`getent group {name}` finds none); create it, or give a numeric gid"
                ),
            )),
            Err(e) => Err(Problem::new(
                field,
                format!("cannot look up group {name:?}: {e}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_ids_and_the_rest_names() {
        assert_eq!(IdOrName::from("65534"), IdOrName::Id(65534));
        assert_eq!(IdOrName::from("nobody"), IdOrName::Name("nobody".into()));
        assert_eq!(IdOrName::from("+1"), IdOrName::Name("+1".into()));
        assert_eq!(
            IdOrName::from("99999999999"),
            IdOrName::Name("99999999999".into())
        );
        assert_eq!(IdOrName::from(7u32), IdOrName::Id(7));
    }

    #[test]
    fn nothing_set_keeps_the_managers_identity() {
        let config = BackgroundProcessConfig::new("p", "/bin/true");
        assert_eq!(resolve(&config).unwrap(), None);
    }

    #[test]
    fn root_by_name_gets_its_primary_group_and_memberships() {
        let config = BackgroundProcessConfig::new("p", "/bin/true").user("root");
        let credentials = resolve(&config).unwrap().unwrap();
        assert_eq!((credentials.uid, credentials.gid), (0, 0));
        assert!(credentials.groups.contains(&0), "{credentials:?}");
    }

    #[test]
    fn an_unknown_numeric_user_needs_a_group() {
        let config = BackgroundProcessConfig::new("p", "/bin/true").user(4_000_000_000u32);
        assert_eq!(resolve(&config).unwrap_err().field, "group");
        let config = config.group(4_000_000_000u32);
        let credentials = resolve(&config).unwrap().unwrap();
        assert_eq!(credentials.uid, 4_000_000_000);
        assert_eq!(credentials.gid, 4_000_000_000);
        assert!(credentials.groups.is_empty());
    }

    #[test]
    fn unknown_names_are_refused_naming_the_field() {
        let config = BackgroundProcessConfig::new("p", "/bin/true").user("no-such-user-tend");
        let problem = resolve(&config).unwrap_err();
        assert_eq!(problem.field, "user");
        assert!(problem.message.contains("no-such-user-tend"), "{problem:?}");
        let config = BackgroundProcessConfig::new("p", "/bin/true")
            .supplementary_groups(["no-such-group-tend"]);
        assert_eq!(resolve(&config).unwrap_err().field, "supplementary_groups");
    }
}
