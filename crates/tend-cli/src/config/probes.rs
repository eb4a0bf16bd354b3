//! The `ready` table of a daemon and the probe keys of its `healthcheck`
//! table: which readiness and health probe kinds it uses, and their
//! targets.

use tend::{ExecProbe, HealthProbe, HttpProbe, Readiness, TcpProbe};
use toml_edit::{Item, Value};

use super::values::{Entry, Problems, entries};

/// The kinds a `ready` table may name, one of them.
pub(super) const READY_KINDS: &[&str] = &["socket", "none", "tcp", "http", "notify", "exec", "log"];
/// The keys a `ready` table may hold.
const READY_KEYS: &[&str] = &[
    "socket", "none", "tcp", "http", "notify", "exec", "log", "remote", "status",
];

/// Reads `ready = { KIND = ... }` (with `remote` for tcp and http, and
/// `status` for http).
pub(super) fn read_ready(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<Readiness> {
    let table = problems.table(entry)?;
    let mut kind: Option<(Entry<'_>, &str)> = None;
    let mut remote = false;
    let mut status = None;
    let before = problems.len();
    for inner in entries(table, &entry.key, &entry.span()) {
        let short = inner.key[entry.key.len() + 1..].to_owned();
        match short.as_str() {
            "remote" => remote = boolean(&inner, problems).unwrap_or(false),
            "status" => status = http_status(&inner, problems),
            k if READY_KINDS.contains(&k) => {
                if let Some((first, _)) = &kind {
                    problems.add(
                        inner.span(),
                        &inner.key,
                        format!(
                            "a daemon has one readiness kind; {} is already given",
                            first.key
                        ),
                    );
                    continue;
                }
                let k = READY_KINDS.iter().find(|&&known| known == k).copied()?;
                kind = Some((inner, k));
            }
            _ => problems.unknown_key(&inner, READY_KEYS),
        }
    }
    let Some((inner, name)) = kind else {
        if problems.len() == before {
            problems.add(
                entry.span(),
                &entry.key,
                "names no readiness kind: write { socket = true }, { none = true }, \
                 { tcp = \"127.0.0.1:8080\" }, { http = \"http://127.0.0.1:8080/healthz\" }, \
                 { notify = true }, { exec = [\"pg_isready\", \"-q\"] } or { log = \"regex\" }",
            );
        }
        return None;
    };
    let flag = |problems: &mut Problems<'_>| match boolean(&inner, problems) {
        Some(true) => Some(()),
        Some(false) => {
            problems.add(
                inner.span(),
                &inner.key,
                "must be true (leave the ready table out for the default)",
            );
            None
        }
        None => None,
    };
    let readiness = match name {
        "socket" => flag(problems).map(|()| Readiness::Socket),
        "none" => flag(problems).map(|()| Readiness::None),
        "notify" => flag(problems).map(|()| Readiness::Notify),
        "tcp" => {
            let text = problems.non_empty_string(&inner)?;
            match TcpProbe::parse(&text) {
                Ok(tcp) => Some(Readiness::Tcp(tcp.remote(remote))),
                Err(message) => {
                    problems.add(inner.span(), &inner.key, message);
                    None
                }
            }
        }
        "http" => {
            let url = problems.non_empty_string(&inner)?;
            let mut http = HttpProbe::new(url).remote(remote);
            http.expect_status = status;
            Some(Readiness::Http(http))
        }
        "exec" => command(&inner, problems).map(Readiness::Exec),
        "log" => problems.non_empty_string(&inner).map(Readiness::Log),
        _ => None,
    };
    if (remote || status.is_some()) && !matches!(name, "tcp" | "http") {
        problems.add(
            entry.span(),
            &entry.key,
            "remote and status apply to tcp and http readiness only",
        );
    }
    readiness
}

/// The probe targets of a `healthcheck` table, collected while its keys are
/// read and turned into a probe at the end.
#[derive(Default)]
pub(super) struct ProbeKeys<'doc> {
    pub kind: Option<(Entry<'doc>, String)>,
    pub url: Option<(Entry<'doc>, String)>,
    pub address: Option<(Entry<'doc>, String)>,
    pub command: Option<(Entry<'doc>, ExecProbe)>,
    pub remote: bool,
    pub status: Option<u16>,
    /// Target keys written, valid or not (an invalid one is reported once,
    /// not again as missing).
    pub given: Vec<&'static str>,
}

impl<'doc> ProbeKeys<'doc> {
    /// Reads one of the probe keys; false when `short` is not one.
    pub fn read(&mut self, short: &str, inner: Entry<'doc>, problems: &mut Problems<'_>) -> bool {
        match short {
            "probe" => {
                if let Some(kind) = problems.string(&inner) {
                    self.kind = Some((inner, kind));
                }
            }
            "url" => {
                self.given.push("url");
                if let Some(url) = problems.non_empty_string(&inner) {
                    self.url = Some((inner, url));
                }
            }
            "address" => {
                self.given.push("address");
                if let Some(address) = problems.non_empty_string(&inner) {
                    self.address = Some((inner, address));
                }
            }
            "command" => {
                self.given.push("command");
                if let Some(exec) = command(&inner, problems) {
                    self.command = Some((inner, exec));
                }
            }
            "remote" => self.remote = boolean(&inner, problems).unwrap_or(false),
            "status" => self.status = http_status(&inner, problems),
            _ => return false,
        }
        true
    }

    /// The probe the keys describe.
    pub fn probe(self, table: &Entry<'_>, problems: &mut Problems<'_>) -> Option<HealthProbe> {
        let kind = self.kind.as_ref().map(|(_, kind)| kind.as_str());
        // A missing target is reported at the `probe` key that asks for it.
        let (span, key) = match &self.kind {
            Some((entry, _)) => (entry.span(), entry.key.clone()),
            None => (table.span(), table.key.clone()),
        };
        let unused =
            |problems: &mut Problems<'_>, key: &Option<(Entry<'_>, String)>, what: &str| {
                if let Some((entry, _)) = key {
                    problems.add(
                        entry.span(),
                        &entry.key,
                        format!("is used by probe = \"{what}\" only"),
                    );
                }
            };
        let probe = match kind {
            None | Some("connect") => Some(HealthProbe::Connect),
            Some("accept") => Some(HealthProbe::Accept),
            Some("ping") => Some(HealthProbe::Ping),
            Some("tcp") => match &self.address {
                Some((entry, text)) => match TcpProbe::parse(text) {
                    Ok(tcp) => Some(HealthProbe::Tcp(tcp.remote(self.remote))),
                    Err(message) => {
                        problems.add(entry.span(), &entry.key, message);
                        None
                    }
                },
                None => {
                    if !self.given.contains(&"address") {
                        problems.add(
                            span.clone(),
                            &key,
                            "probe = \"tcp\" needs address = \"host:port\"",
                        );
                    }
                    None
                }
            },
            Some("http") => match &self.url {
                Some((_, url)) => {
                    let mut http = HttpProbe::new(url.clone()).remote(self.remote);
                    http.expect_status = self.status;
                    Some(HealthProbe::Http(http))
                }
                None => {
                    if !self.given.contains(&"url") {
                        problems.add(
                            span.clone(),
                            &key,
                            "probe = \"http\" needs url = \"http://127.0.0.1:PORT/path\" \
                         (or a path such as \"/healthz\", asked over the daemon's socket)",
                        );
                    }
                    None
                }
            },
            Some("exec") => match &self.command {
                Some((_, exec)) => Some(HealthProbe::Exec(exec.clone())),
                None => {
                    if !self.given.contains(&"command") {
                        problems.add(
                            span.clone(),
                            &key,
                            "probe = \"exec\" needs command = [\"program\", \"arg\", ...]",
                        );
                    }
                    None
                }
            },
            Some(other) => {
                let (entry, _) = self.kind.as_ref()?;
                problems.add(
                    entry.span(),
                    &entry.key,
                    format!(
                        "must be \"connect\", \"accept\", \"ping\", \"tcp\", \"http\" or \"exec\", found {other:?}"
                    ),
                );
                None
            }
        };
        if kind != Some("tcp") {
            unused(problems, &self.address, "tcp");
        }
        if kind != Some("http") {
            unused(problems, &self.url, "http");
        }
        if let (true, Some((entry, _))) = (kind != Some("exec"), &self.command) {
            problems.add(entry.span(), &entry.key, "is used by probe = \"exec\" only");
        }
        probe
    }
}

fn boolean(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<bool> {
    match entry.item {
        Item::Value(Value::Boolean(b)) => Some(*b.value()),
        _ => {
            problems.add(entry.span(), &entry.key, "must be true or false");
            None
        }
    }
}

fn http_status(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<u16> {
    match entry.item {
        Item::Value(Value::Integer(n)) if (100..=599).contains(n.value()) => {
            Some(*n.value() as u16)
        }
        _ => {
            problems.add(
                entry.span(),
                &entry.key,
                "must be an HTTP status from 100 to 599, like 200 or 204",
            );
            None
        }
    }
}

fn command(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<ExecProbe> {
    let list = problems.string_list(entry)?;
    if list.first().is_none_or(|program| program.is_empty()) {
        problems.add(
            entry.span(),
            &entry.key,
            "must name a program first, like [\"pg_isready\", \"-q\"]; no shell is used",
        );
        return None;
    }
    Some(ExecProbe::new(list))
}
