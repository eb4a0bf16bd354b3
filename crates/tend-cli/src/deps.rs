//! Dependencies between daemons (`depends_on`): the graph, its order, and
//! when a dependency's condition is met. Pure logic, tested from tables;
//! the supervisor ([`crate::server`]) waits and starts with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use tend::ProcessState;

/// What a dependent waits for in a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `ready` (or `running`): its socket accepts connections, or, without
    /// a socket, it was spawned.
    Ready,
    /// `healthy`: ready, and its first health check passed when it has
    /// one (just ready when it has none). The list form's condition.
    Healthy,
    /// `completed`: a one-shot task (`restart = "never"`) exited 0.
    Completed,
}

impl Condition {
    /// The names a config may give, for messages.
    pub const NAMES: &'static str = "\"ready\", \"running\", \"healthy\" or \"completed\"";

    /// The condition named `name` in a config.
    pub fn from_name(name: &str) -> Option<Condition> {
        match name {
            "ready" | "running" => Some(Condition::Ready),
            "healthy" => Some(Condition::Healthy),
            "completed" => Some(Condition::Completed),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Condition::Ready => "ready",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependency {
    /// The daemon depended on.
    pub name: String,
    /// What the dependent waits for.
    pub condition: Condition,
}

/// What is known of a dependency, for [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed<'a> {
    /// Its state.
    pub state: ProcessState,
    /// Whether it completed (see [`tend::ProcessInfo::completed`]).
    pub completed: bool,
    /// Whether it has a health check.
    pub has_healthcheck: bool,
    /// Whether a health check of its current incarnation passed.
    pub passed_health_check: bool,
    /// Why it failed, if it did.
    pub last_error: Option<&'a str>,
}

/// Where a dependent stands with one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds: the dependent may start.
    Met,
    /// Not yet; wait for the dependency's next change. A dependency that
    /// restarts within its budget is `Starting` meanwhile: waited for.
    Wait,
    /// It will not hold: the dependent is not started, for this reason.
    Failed(String),
}

/// Whether `condition` holds for a dependency observed as `seen`.
pub fn evaluate(condition: Condition, seen: &Observed<'_>) -> Verdict {
    use ProcessState as S;
    match (condition, seen.state) {
        (_, S::Error) => Verdict::Failed(seen.last_error.unwrap_or("it failed").to_owned()),
        (Condition::Completed, S::Stopped) if seen.completed => Verdict::Met,
        (_, S::Stopped) if seen.completed => Verdict::Failed(
            "it ran to its end and exited (it is a one-shot task; depend on it with \"completed\")"
                .to_owned(),
        ),
        (_, S::Stopped | S::Stopping) => Verdict::Failed("it was stopped".to_owned()),
        (Condition::Ready, S::Running) => Verdict::Met,
        (Condition::Healthy, S::Running) if !seen.has_healthcheck || seen.passed_health_check => {
            Verdict::Met
        }
        (_, S::Starting | S::Running) => Verdict::Wait,
    }
}

/// The `depends_on` of each daemon, by name.
pub type Graph = BTreeMap<String, Vec<Dependency>>;

/// Every dependency cycle, each once, as the names along it with the first
/// repeated at the end (`["a", "b", "a"]`), starting from the first of its
/// members in `order`. Dependencies on unknown names are ignored here.
pub fn cycles(graph: &Graph, order: &[String]) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        name: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        marks.insert(name.to_owned(), Mark::OnPath);
        path.push(name.to_owned());
        for dependency in graph.get(name).into_iter().flatten() {
            match marks.get(&dependency.name).copied() {
                None => {} // unknown: reported elsewhere
                Some(Mark::New) => visit(&dependency.name, graph, marks, path, found),
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|n| *n == dependency.name).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(dependency.name.clone());
                    found.push(cycle);
                }
                Some(Mark::Done) => {}
            }
        }
        path.pop();
        marks.insert(name.to_owned(), Mark::Done);
    }
    let mut marks: BTreeMap<String, Mark> =
        graph.keys().map(|name| (name.clone(), Mark::New)).collect();
    let mut found = Vec::new();
    for name in order {
        if marks.get(name) == Some(&Mark::New) {
            visit(name, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// `roots` and everything they depend on, directly or not.
pub fn with_dependencies<'a>(
    graph: &Graph,
    roots: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    let mut selected = BTreeSet::new();
    let mut queue: Vec<String> = roots.into_iter().map(str::to_owned).collect();
    while let Some(name) = queue.pop() {
        if selected.insert(name.clone()) {
            for dependency in graph.get(&name).into_iter().flatten() {
                queue.push(dependency.name.clone());
            }
        }
    }
    selected
}

/// Every daemon that depends on `name`, directly or not.
pub fn dependents(graph: &Graph, name: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut queue = vec![name.to_owned()];
    while let Some(current) = queue.pop() {
        for (dependent, dependencies) in graph {
            if dependencies.iter().any(|d| d.name == current) && found.insert(dependent.clone()) {
                queue.push(dependent.clone());
            }
        }
    }
    found.remove(name);
    found
}

/// `names` in stop order: groups stopped one after the other, each group
/// in parallel; a daemon is in a group before every daemon it depends on.
/// (The reverse of the start order; the graph has no cycles.)
pub fn stop_order(graph: &Graph, names: &BTreeSet<String>) -> Vec<Vec<String>> {
    // Depth: the longest chain of dependencies below a daemon, within
    // `names`. Deepest first stops dependents before what they need.
    fn depth(
        name: &str,
        graph: &Graph,
        names: &BTreeSet<String>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(&known) = memo.get(name) {
            return known;
        }
        // Marked first, so a cycle (refused by validation) cannot recurse
        // forever.
        memo.insert(name.to_owned(), 0);
        let below = graph
            .get(name)
            .into_iter()
            .flatten()
            .filter(|d| names.contains(&d.name))
            .map(|d| depth(&d.name, graph, names, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(name.to_owned(), below);
        below
    }
    let mut memo = BTreeMap::new();
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for name in names {
        let level = depth(name, graph, names, &mut memo);
        groups.entry(level).or_default().push(name.clone());
    }
    groups.into_values().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(name, deps)| {
                let deps = deps
                    .iter()
                    .map(|d| Dependency {
                        name: (*d).to_owned(),
                        condition: Condition::Healthy,
                    })
                    .collect();
                ((*name).to_owned(), deps)
            })
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn conditions_by_name() {
        assert_eq!(Condition::from_name("ready"), Some(Condition::Ready));
        assert_eq!(Condition::from_name("running"), Some(Condition::Ready));
        assert_eq!(Condition::from_name("healthy"), Some(Condition::Healthy));
        assert_eq!(
            Condition::from_name("completed"),
            Some(Condition::Completed)
        );
        assert_eq!(Condition::from_name("started"), None);
    }

    /// Every condition against every state a dependency can show.
    #[test]
    fn verdict_table() {
        use Condition as C;
        use ProcessState as S;
        let seen = |state, completed, has_check, passed| Observed {
            state,
            completed,
            has_healthcheck: has_check,
            passed_health_check: passed,
            last_error: Some("exited with code 1"),
        };
        let met = Verdict::Met;
        let wait = Verdict::Wait;
        let failed = |reason: &str| Verdict::Failed(reason.to_owned());
        let rows = [
            (
                C::Ready,
                seen(S::Starting, false, false, false),
                wait.clone(),
            ),
            (C::Ready, seen(S::Running, false, true, false), met.clone()),
            (
                C::Ready,
                seen(S::Error, false, false, false),
                failed("exited with code 1"),
            ),
            (
                C::Ready,
                seen(S::Stopped, false, false, false),
                failed("it was stopped"),
            ),
            (
                C::Ready,
                seen(S::Stopping, false, false, false),
                failed("it was stopped"),
            ),
            (
                C::Healthy,
                seen(S::Running, false, false, false),
                met.clone(),
            ),
            (
                C::Healthy,
                seen(S::Running, false, true, false),
                wait.clone(),
            ),
            (C::Healthy, seen(S::Running, false, true, true), met.clone()),
            (
                C::Healthy,
                seen(S::Starting, false, true, false),
                wait.clone(),
            ),
            (
                C::Healthy,
                seen(S::Error, false, true, false),
                failed("exited with code 1"),
            ),
            (
                C::Completed,
                seen(S::Starting, false, false, false),
                wait.clone(),
            ),
            (
                C::Completed,
                seen(S::Running, false, false, false),
                wait.clone(),
            ),
            (
                C::Completed,
                seen(S::Stopped, true, false, false),
                met.clone(),
            ),
            (
                C::Completed,
                seen(S::Stopped, false, false, false),
                failed("it was stopped"),
            ),
            (
                C::Completed,
                seen(S::Error, false, false, false),
                failed("exited with code 1"),
            ),
        ];
        for (condition, observed, expected) in rows {
            assert_eq!(
                evaluate(condition, &observed),
                expected,
                "{condition} {observed:?}"
            );
        }
        let done = evaluate(C::Ready, &seen(S::Stopped, true, false, false));
        assert!(matches!(done, Verdict::Failed(reason) if reason.contains("one-shot")));
    }

    #[test]
    fn cycles_are_found_once_each() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &["d"]),
            ("e", &["a", "x"]),
            ("f", &[]),
        ]);
        let order = names(&["a", "b", "c", "d", "e", "f"]);
        assert_eq!(
            cycles(&g, &order),
            [names(&["a", "b", "c", "a"]), names(&["d", "d"])]
        );
        let acyclic = graph(&[("app", &["db", "cache"]), ("cache", &["db"]), ("db", &[])]);
        assert!(cycles(&acyclic, &names(&["app", "cache", "db"])).is_empty());
    }

    #[test]
    fn selection_pulls_in_dependencies_only() {
        let g = graph(&[
            ("app", &["db", "migrate"]),
            ("migrate", &["db"]),
            ("db", &[]),
            ("other", &[]),
        ]);
        assert_eq!(
            with_dependencies(&g, ["app"]),
            ["app", "db", "migrate"].map(String::from).into()
        );
        assert_eq!(
            with_dependencies(&g, ["db"]),
            ["db"].map(String::from).into()
        );
    }

    #[test]
    fn dependents_are_found_transitively() {
        let g = graph(&[
            ("app", &["migrate"]),
            ("migrate", &["db"]),
            ("db", &[]),
            ("x", &[]),
        ]);
        assert_eq!(
            dependents(&g, "db"),
            ["app", "migrate"].map(String::from).into()
        );
        assert!(dependents(&g, "app").is_empty());
    }

    #[test]
    fn stop_order_puts_dependents_first() {
        let g = graph(&[
            ("app", &["db", "cache"]),
            ("cache", &["db"]),
            ("db", &[]),
            ("worker", &[]),
        ]);
        let all = ["app", "cache", "db", "worker"].map(String::from).into();
        assert_eq!(
            stop_order(&g, &all),
            [names(&["app"]), names(&["cache"]), names(&["db", "worker"])]
        );
        // Only what is asked for; a dependency outside the set is ignored.
        let some = ["app", "db"].map(String::from).into();
        assert_eq!(stop_order(&g, &some), [names(&["app"]), names(&["db"])]);
    }
}
