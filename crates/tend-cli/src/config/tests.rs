//! Unit tests of config reading; the integration tests run the same
//! checks through `tend check`.

use std::{fs, path::Path, time::Duration};

use super::*;
use tend::{ExecProbe, HttpProbe, Readiness, TcpProbe};

const FILE: &str = "/usr/tend.toml";

fn parsed(text: &str) -> TendConfig {
    parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match parse(Path::new(FILE), text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// `(line, key)` of every problem.
fn places(text: &str) -> Vec<(Option<usize>, String)> {
    problems(text)
        .into_iter()
        .map(|p| (p.line, p.key))
        .collect()
}

#[test]
fn a_full_process_is_read_with_paths_resolved() {
    let config = parsed(
        r#"
[settings]
state_dir = ".tend"

[process.echo]
command = "python3"
args = ["examples/daemons/echo_daemon.py", "-v"]
cwd = "."
socket = "echo.sock"
env = { LOG_LEVEL = "debug" }
startup_timeout = "30s"
shutdown_grace_period = 2500
max_restart_attempts = 4
restart_delay = "1m30s"
stable_period = "10s"
log_file = "echo.log"

[process.echo.healthcheck]
interval = "30s"
timeout = "250ms"
retries = 2
"#,
    );
    assert_eq!(config.state_dir.path(), Path::new("/usr/.tend"));
    let echo = &config.processes[0];
    assert_eq!(echo.name, "echo");
    assert_eq!(echo.command, Path::new("python3"));
    assert_eq!(echo.args, ["examples/daemons/echo_daemon.py", "-v"]);
    assert_eq!(echo.plugin_path.as_deref(), Some(Path::new("/usr/.")));
    assert_eq!(
        echo.socket_path.as_deref(),
        Some(Path::new("/usr/.tend/echo.sock"))
    );
    assert_eq!(echo.env, [("LOG_LEVEL".into(), "debug".into())]);
    assert_eq!(echo.startup_timeout, Duration::from_secs(30));
    assert_eq!(echo.shutdown_grace_period, Duration::from_millis(2500));
    assert_eq!(echo.max_restart_attempts, 4);
    assert_eq!(echo.restart_delay, Duration::from_secs(90));
    assert_eq!(echo.stable_period, Duration::from_secs(10));
    assert_eq!(
        echo.log_file.as_deref(),
        Some(Path::new("/usr/.tend/echo.log"))
    );
    let check = echo.healthcheck.expect("healthcheck");
    assert_eq!(check.interval, Duration::from_secs(30));
    assert_eq!(check.timeout, Duration::from_millis(250));
    assert_eq!(check.retries, 2);
}

#[test]
fn defaults_fill_what_is_not_given() {
    let config = parsed(
        r#"
[settings]
state_dir = "/tmp/st"
[process.worker]
command = "/bin/sleep"
args = ["1000"]
[process.web]
command = "./bin/web"
cwd = "lib"
socket = "/run/web.sock"
[process.web.healthcheck]
"#,
    );
    let worker = &config.processes[0];
    assert_eq!(worker.plugin_path.as_deref(), Some(Path::new("/usr")));
    assert_eq!(worker.socket_path, None);
    assert_eq!(worker.healthcheck, None);
    assert_eq!(worker.startup_timeout, tend::defaults::STARTUP_TIMEOUT);
    assert_eq!(
        worker.log_file.as_deref(),
        Some(Path::new("/tmp/st/logs/worker.log"))
    );
    let web = &config.processes[1];
    assert_eq!(web.command, Path::new("/usr/lib/./bin/web"));
    assert_eq!(web.socket_path.as_deref(), Some(Path::new("/run/web.sock")));
    assert_eq!(web.healthcheck, Some(HealthCheck::default()));
}

#[test]
fn processes_keep_file_order() {
    let config = parsed(
        "[settings]\nstate_dir = \"/tmp/st\"\n[process.b]\ncommand = \"x\"\n[process.a]\ncommand = \"y\"\n",
    );
    let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
}

#[test]
fn every_problem_is_reported_with_its_line_and_key() {
    let text = r#"[settings]
state_dir = "/tmp/st"
colour = "blue"

[process.echo]
command = "python3"
startup_timeout = "5x"
retries = 3
env = { A = 1 }

[process."bad name"]
command = ""

[process.echo2]
args = "not-a-list"
max_restart_attempts = -1
"#;
    assert_eq!(
        places(text),
        [
            (Some(3), "settings.colour".into()),
            (Some(7), "process.echo.startup_timeout".into()),
            (Some(8), "process.echo.retries".into()),
            (Some(9), "process.echo.env.A".into()),
            (Some(11), "process.bad name".into()),
            (Some(12), "process.bad name.command".into()),
            (Some(14), "process.echo2.command".into()),
            (Some(15), "process.echo2.args".into()),
            (Some(16), "process.echo2.max_restart_attempts".into()),
        ]
    );
}

#[test]
fn library_validation_is_reported_under_file_keys() {
    let text = r#"[settings]
state_dir = "/tmp/st"
[process.p]
command = "x"
cwd = "/definitely/not/here"
socket = "/tmp/st/sssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss.sock"
startup_timeout = 0
[process.p.healthcheck]
retries = 0
"#;
    assert_eq!(
        places(text),
        [
            (Some(5), "process.p.cwd".into()),
            (Some(6), "process.p.socket".into()),
            (Some(7), "process.p.startup_timeout".into()),
            (Some(9), "process.p.healthcheck.retries".into()),
        ]
    );
}

#[test]
fn shared_sockets_and_the_control_socket_are_refused() {
    let text = r#"[settings]
state_dir = "/tmp/st"
[process.a]
command = "x"
socket = "same.sock"
[process.b]
command = "x"
socket = "same.sock"
[process.c]
command = "x"
socket = "tend.sock"
"#;
    assert_eq!(
        places(text),
        [
            (Some(8), "process.b.socket".into()),
            (Some(11), "process.c.socket".into()),
        ]
    );
}

#[test]
fn a_health_check_needs_a_socket() {
    let text = "[settings]\nstate_dir = \"/tmp/st\"\n[process.p]\ncommand = \"x\"\n[process.p.healthcheck]\ninterval = \"1s\"\n";
    assert_eq!(places(text), [(Some(5), "process.p.healthcheck".into())]);
}

#[test]
fn a_file_without_daemons_is_refused() {
    assert_eq!(
        places("[settings]\nstate_dir = \"/tmp/st\"\n"),
        [(None, "process".into())]
    );
    assert_eq!(places("process = {}\n"), [(Some(1), "process".into())]);
}

#[test]
fn syntax_errors_give_the_line() {
    let problems = problems("[process.a]\ncommand = \"x\"\nargs = [\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].line.is_some());
    assert!(problems[0].message.starts_with("invalid TOML"));
}

#[test]
fn a_long_state_dir_is_refused_for_its_control_socket() {
    let long = format!("/tmp/{}", "d".repeat(100));
    let text = format!("[settings]\nstate_dir = \"{long}\"\n[process.p]\ncommand = \"x\"\n");
    assert_eq!(places(&text), [(Some(2), "settings.state_dir".into())]);
}

#[test]
fn the_message_names_file_line_and_key() {
    let error = parse(
        Path::new(FILE),
        "[settings]\nstate_dir = \"/tmp/st\"\n[process.p]\ncommand = 5\n",
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "1 problem in /usr/tend.toml:\n  /usr/tend.toml:4: process.p.command: must be a string, found an integer"
    );
}

#[test]
fn events_and_the_health_probe_are_read() {
    let config = parsed(
        r#"
[settings]
state_dir = "/tmp/st"
[process.a]
command = "x"
socket = "a.sock"
events = ["config-changed", "tick"]
[process.a.healthcheck]
probe = "ping"
[process.b]
command = "x"
socket = "b.sock"
[process.b.healthcheck]
interval = "1s"
[process.c]
command = "x"
socket = "c.sock"
healthcheck = { probe = "connect" }
[process.d]
command = "x"
socket = "d.sock"
healthcheck = { probe = "accept" }
"#,
    );
    let [a, b, c, d] = &config.processes[..] else {
        panic!("four daemons expected");
    };
    assert_eq!(a.events, ["config-changed", "tick"]);
    assert_eq!(a.health_probe, HealthProbe::Ping);
    assert_eq!(a.healthcheck, Some(HealthCheck::default()));
    assert!(b.events.is_empty());
    assert_eq!(b.health_probe, HealthProbe::Connect);
    assert_eq!(c.health_probe, HealthProbe::Connect);
    assert_eq!(d.health_probe, HealthProbe::Accept);
    assert!(config.environments.is_empty());
}

/// A config file in a fresh folder holding `files` (empty files).
fn in_folder(files: &[&str], text: &str) -> (tempfile::TempDir, Result<TendConfig, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let path = dir.path().join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }
    let result = parse(&dir.path().join("tend.toml"), text);
    (dir, result)
}

#[test]
fn environment_tables_resolve_their_files_against_cwd() {
    let (dir, result) = in_folder(
        &[
            "plug/requirements.txt",
            "plug/package.json",
            "web/deps.json",
        ],
        r#"
[settings]
state_dir = "/tmp/st"
[process.py]
cwd = "plug"
[process.py.python]
requirements = "requirements.txt"
[process.bare]
command = "./run.sh"
python = {}
[process.js]
cwd = "plug"
node = {}
[process.web]
command = "node"
args = ["server.js"]
cwd = "web"
[process.web.node]
package = "deps.json"
"#,
    );
    let config = result.unwrap_or_else(|e| panic!("{e}"));
    let base = dir.path();
    let command = |name: &str| {
        let process = config.processes.iter().find(|p| p.name == name).unwrap();
        process.command.clone()
    };
    assert_eq!(command("py"), Path::new("python3"));
    assert_eq!(command("bare"), base.join("./run.sh"));
    assert_eq!(command("js"), Path::new("node"));
    assert_eq!(command("web"), Path::new("node"));
    let environment = |name: &str| config.environments[name].clone();
    assert_eq!(
        environment("py"),
        PluginEnvironment {
            python: Some(PythonEnvironment {
                requirements: Some(base.join("plug/requirements.txt"))
            }),
            node: None
        }
    );
    assert_eq!(
        environment("bare").python,
        Some(PythonEnvironment { requirements: None })
    );
    assert_eq!(
        environment("js").node,
        Some(NodeEnvironment {
            package: base.join("plug/package.json")
        })
    );
    assert_eq!(
        environment("web").node,
        Some(NodeEnvironment {
            package: base.join("web/deps.json")
        })
    );
}

#[test]
fn problems_of_the_new_keys_have_their_line_and_key() {
    let text = r#"[settings]
state_dir = "/tmp/st"
[process.a]
socket = "a.sock"
events = ["ok", ""]
[process.a.healthcheck]
probe = "smtp"
[process.a.python]
requirements = "missing.txt"
[process.b]
command = "x"
events = ["tick"]
[process.c]
python = { requirements = 5, pip = "--no-index" }
[process.d]
command = "x"
node = "package.json"
"#;
    let (_dir, result) = in_folder(&[], text);
    let Err(ConfigError::Invalid { problems, .. }) = result else {
        panic!("config was accepted");
    };
    let places: Vec<(Option<usize>, String)> =
        problems.into_iter().map(|p| (p.line, p.key)).collect();
    assert_eq!(
        places,
        [
            (Some(5), "process.a.events[1]".into()),
            (Some(7), "process.a.healthcheck.probe".into()),
            (Some(9), "process.a.python.requirements".into()),
            (Some(12), "process.b.events".into()),
            (Some(14), "process.c.python.requirements".into()),
            (Some(14), "process.c.python.pip".into()),
            (Some(17), "process.d.node".into()),
        ]
    );
}

#[test]
fn settings_only_keeps_settings_and_line_numbers() {
    let text = "# top\n[process.a]\ncommand = \"x\"\n[settings]\nstate_dir = \"s\"\n[process.b]\nargs = [\n  \"y\",\n]\n";
    let kept = super::settings_only(text);
    assert_eq!(kept.lines().count(), text.lines().count());
    assert_eq!(kept, "# top\n\n\n[settings]\nstate_dir = \"s\"\n\n\n\n\n");
}

#[test]
fn state_dir_is_found_despite_errors_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tend.toml");
    std::fs::write(
        &file,
        "[settings]\nstate_dir = \"st\"\n[process.a]\ncommand = \n",
    )
    .unwrap();
    let (_, state_dir) = super::load_state_dir(&file).unwrap();
    assert!(state_dir.path().ends_with("st"));
}

#[test]
fn limits_and_containment_are_read() {
    let config = parsed(
        r#"
[settings]
containment = "process-group"

[process.a]
command = "a"
memory_max = "512M"
pids_max = 64
cpu_max = 0.5

[process.b]
command = "b"
memory_max = 1048576
cpu_max = 2
"#,
    );
    assert_eq!(config.containment, ContainmentChoice::ProcessGroup);
    let (a, b) = (&config.processes[0], &config.processes[1]);
    assert_eq!(a.memory_max, Some(512 << 20));
    assert_eq!(a.pids_max, Some(64));
    assert_eq!(a.cpu_max, Some(0.5));
    assert_eq!(b.memory_max, Some(1 << 20));
    assert_eq!(b.pids_max, None);
    assert_eq!(b.cpu_max, Some(2.0));
    let plain = parsed("[process.a]\ncommand = \"a\"\n");
    assert_eq!(plain.containment, ContainmentChoice::Auto);
    assert_eq!(plain.processes[0].memory_max, None);
    for (text, choice) in [
        ("auto", ContainmentChoice::Auto),
        ("cgroup", ContainmentChoice::Cgroup),
    ] {
        let config = parsed(&format!(
            "[settings]\ncontainment = \"{text}\"\n[process.a]\ncommand = \"a\"\n"
        ));
        assert_eq!(config.containment, choice);
    }
}

#[test]
fn bad_limits_and_containment_have_their_line_and_key() {
    let text = r#"[settings]
containment = "jail"

[process.a]
command = "a"
memory_max = "12 parsecs"
pids_max = 0
cpu_max = -1

[process.b]
command = "b"
memory_max = 0
pids_max = -3
cpu_max = "half"
"#;
    assert_eq!(
        places(text),
        [
            (Some(2), "settings.containment".into()),
            (Some(6), "process.a.memory_max".into()),
            (Some(7), "process.a.pids_max".into()),
            (Some(8), "process.a.cpu_max".into()),
            (Some(12), "process.b.memory_max".into()),
            (Some(13), "process.b.pids_max".into()),
            (Some(14), "process.b.cpu_max".into()),
        ]
    );
    let messages: Vec<String> = problems(text).into_iter().map(|p| p.message).collect();
    assert!(messages[0].contains("\"process-group\""), "{}", messages[0]);
    assert!(messages[1].contains("unknown unit"), "{}", messages[1]);
    assert!(messages[2].contains("at least 1"), "{}", messages[2]);
    assert!(messages[3].contains("number of CPUs"), "{}", messages[3]);
    assert!(messages[6].contains("must be a number"), "{}", messages[6]);
}

#[test]
fn readiness_kinds_and_probe_targets_are_read() {
    let config = parsed(
        r#"
[settings]
state_dir = "/tmp/st"
[process.api]
command = "x"
ready = { http = "http://127.0.0.1:8080/healthz", status = 204 }
[process.api.healthcheck]
probe = "http"
url = "http://localhost:8080/healthz"
[process.db]
command = "x"
ready = { exec = ["pg_isready", "-q"] }
healthcheck = { probe = "exec", command = ["pg_isready"], timeout = "2s" }
[process.cache]
command = "redis-server"
ready = { notify = true }
watchdog = "2s"
healthcheck = { probe = "tcp", address = "127.0.0.1:6379" }
[process.far]
command = "x"
ready = { tcp = "10.0.0.5:80", remote = true }
[process.worker]
command = "x"
ready = { log = "ready to accept" }
[process.plain]
command = "x"
ready = { none = true }
"#,
    );
    let [api, db, cache, far, worker, plain] = &config.processes[..] else {
        panic!("six daemons expected");
    };
    assert_eq!(
        api.readiness,
        Readiness::Http(HttpProbe::new("http://127.0.0.1:8080/healthz").expect_status(204))
    );
    assert_eq!(
        api.health_probe,
        HealthProbe::Http(HttpProbe::new("http://localhost:8080/healthz"))
    );
    assert_eq!(
        db.readiness,
        Readiness::Exec(ExecProbe::new(["pg_isready", "-q"]))
    );
    assert_eq!(
        db.health_probe,
        HealthProbe::Exec(ExecProbe::new(["pg_isready"]))
    );
    assert_eq!(cache.readiness, Readiness::Notify);
    assert_eq!(cache.watchdog, Some(Duration::from_secs(2)));
    assert_eq!(
        cache.health_probe,
        HealthProbe::Tcp(TcpProbe::parse("127.0.0.1:6379").unwrap())
    );
    assert_eq!(
        far.readiness,
        Readiness::Tcp(TcpProbe::parse("10.0.0.5:80").unwrap().remote(true))
    );
    assert_eq!(worker.readiness, Readiness::Log("ready to accept".into()));
    assert_eq!(plain.readiness, Readiness::None);
}

#[test]
fn bad_readiness_and_probe_keys_are_reported_with_their_line() {
    let found = places(
        r#"[process.a]
command = "x"
ready = { tcp = "10.0.0.5:80" }
[process.b]
command = "x"
ready = { notify = true, log = "x" }
[process.c]
command = "x"
ready = { log = "(unclosed" }
[process.d]
command = "x"
watchdog = "1s"
[process.e]
command = "x"
healthcheck = { probe = "tcp" }
[process.f]
command = "x"
healthcheck = { probe = "exec", command = [], url = "http://127.0.0.1/" }
[process.g]
command = "x"
ready = { http = "/healthz" }
[process.h]
command = "x"
ready = { tcp = "example.com:80" }
[process.i]
command = "x"
ready = { socket = true }
"#,
    );
    let keys: Vec<(Option<usize>, &str)> = found.iter().map(|(l, k)| (*l, k.as_str())).collect();
    assert!(keys.contains(&(Some(3), "process.a.ready")), "{keys:?}");
    assert!(keys.contains(&(Some(6), "process.b.ready.log")), "{keys:?}");
    assert!(keys.contains(&(Some(9), "process.c.ready")), "{keys:?}");
    assert!(keys.contains(&(Some(12), "process.d.watchdog")), "{keys:?}");
    assert!(
        keys.contains(&(Some(15), "process.e.healthcheck.probe")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&(Some(18), "process.f.healthcheck.command")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&(Some(18), "process.f.healthcheck.url")),
        "{keys:?}"
    );
    assert!(keys.contains(&(Some(21), "process.g.ready")), "{keys:?}");
    assert!(
        keys.contains(&(Some(24), "process.h.ready.tcp")),
        "{keys:?}"
    );
    let messages: Vec<String> = problems(
        r#"[process.a]
command = "x"
ready = { tcp = "10.0.0.5:80" }
"#,
    )
    .into_iter()
    .map(|p| p.message)
    .collect();
    assert!(messages[0].contains("remote = true"), "{messages:?}");
}

fn test_env(name: &str) -> Option<std::ffi::OsString> {
    match name {
        "APP_HOME" => Some("/usr".into()),
        "PORT" => Some("8080".into()),
        _ => None,
    }
}

fn parsed_with_env(text: &str) -> Result<TendConfig, ConfigError> {
    parse_with_env(Path::new(FILE), text, test_env)
}

#[test]
fn policy_keys_are_read() {
    let config = parsed(
        r#"
[process.migrate]
command = "migrate"
restart = "never"
stop_signal = "SIGINT"
autostart = false

[process.app]
command = "app"
restart = "on-failure"
retry_first_start = true
stop_signal = "quit"
depends_on = { migrate = "completed", db = "ready", cache = "healthy" }

[process.db]
command = "db"

[process.cache]
command = "cache"
depends_on = ["db"]
"#,
    );
    let [migrate, app, db, cache] = &config.processes[..] else {
        panic!("four daemons")
    };
    assert_eq!(migrate.restart, RestartPolicy::Never);
    assert_eq!(migrate.stop_signal, StopSignal::Int);
    assert_eq!(app.restart, RestartPolicy::OnFailure);
    assert!(app.retry_first_start);
    assert_eq!(app.stop_signal, StopSignal::Quit);
    assert_eq!(db.restart, RestartPolicy::Always);
    assert!(!db.retry_first_start);
    assert_eq!(db.stop_signal, StopSignal::Term);
    assert!(!config.autostart("migrate"));
    assert!(config.autostart("app"));
    let dependency = |name: &str, condition| Dependency {
        name: name.to_owned(),
        condition,
    };
    assert_eq!(
        config.dependencies("app"),
        [
            dependency("migrate", Condition::Completed),
            dependency("db", Condition::Ready),
            dependency("cache", Condition::Healthy)
        ]
    );
    assert_eq!(
        config.dependencies(&cache.name),
        [dependency("db", Condition::Healthy)]
    );
    assert!(config.dependencies("db").is_empty());
}

#[test]
fn dependency_problems_have_their_line() {
    let text = r#"
[process.a]
command = "a"
depends_on = ["b"]

[process.b]
command = "b"
depends_on = { c = "ready" }

[process.c]
command = "c"
depends_on = ["a", "ghost", "c"]

[process.d]
command = "d"
depends_on = { a = "completed", e = "ready" }

[process.e]
command = "e"
depends_on = "a"
restart = "sometimes"
stop_signal = "SIGKILL"
autostart = "yes"

[process.f]
command = "f"
depends_on = { b = "started" }
"#;
    let found = problems(text);
    let find = |needle: &str| {
        found
            .iter()
            .find(|p| p.message.contains(needle))
            .unwrap_or_else(|| panic!("no problem saying {needle:?} in {found:#?}"))
    };
    assert_eq!(find("no daemon named \"ghost\"").line, Some(12));
    assert_eq!(find("cannot depend on itself").line, Some(12));
    let cycle = find("dependency cycle: a -> b -> c -> a");
    assert_eq!(
        (cycle.line, cycle.key.as_str()),
        (Some(4), "process.a.depends_on")
    );
    let completed = find("waits for a one-shot task");
    assert_eq!(completed.line, Some(16));
    assert!(completed.message.contains("restart = \"never\""));
    assert_eq!(find("found \"started\"").line, Some(27));
    assert_eq!(find("must be a list of daemon names").line, Some(20));
    assert_eq!(find("\"on-failure\"").line, Some(21));
    assert_eq!(find("found \"SIGKILL\"").line, Some(22));
    assert_eq!(find("must be true or false").line, Some(23));
    // `e` has problems, yet `d` may name it: no "no daemon named".
    assert_eq!(found.len(), 9, "{found:#?}");
}

#[test]
fn variables_are_replaced_in_commands_args_paths_and_env() {
    let config = parsed_with_env(
        r#"
[process.app]
command = "${APP_HOME}/bin/app"
args = ["--port", "${PORT}", "--name=${NAME:-app}", "$$HOME"]
cwd = "${APP_HOME:-/tmp}"
socket = "${NAME:-app}.sock"
env = { URL = "http://localhost:${PORT}/", LITERAL = "a$b" }
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = &config.processes[0];
    assert_eq!(app.command, Path::new("/usr/bin/app"));
    assert_eq!(app.args, ["--port", "8080", "--name=app", "$HOME"]);
    assert_eq!(app.plugin_path.as_deref(), Some(Path::new("/usr")));
    assert!(app.socket_path.as_ref().unwrap().ends_with("app.sock"));
    assert_eq!(
        app.env,
        [
            ("URL".into(), "http://localhost:8080/".into()),
            ("LITERAL".into(), "a$b".into())
        ]
    );
}

#[test]
fn an_unknown_variable_without_default_is_a_problem_with_its_line() {
    let result = parsed_with_env(
        r#"
[process.app]
command = "app"
args = ["ok", "${MISSING}"]
env = { A = "${ALSO_MISSING}" }
"#,
    );
    let Err(ConfigError::Invalid { problems, .. }) = result else {
        panic!("accepted")
    };
    let places: Vec<_> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        places,
        [
            (Some(4), "process.app.args[1]"),
            (Some(5), "process.app.env.A")
        ]
    );
    assert!(problems[0].message.contains("MISSING is not set"));
}

#[test]
fn env_files_come_first_and_env_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("app.env"),
        "# comment\nA=from-file\nexport B=\"quoted value\"\nC=file\n",
    )
    .unwrap();
    fs::write(dir.path().join("more.env"), "C=more\n").unwrap();
    let config = parse(
        &dir.path().join("tend.toml"),
        r#"
[process.app]
command = "app"
env = { A = "from-table" }
env_file = ["app.env", "more.env"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let env: Vec<(String, String)> = config.processes[0]
        .env
        .iter()
        .map(|(k, v)| (k.to_str().unwrap().into(), v.to_str().unwrap().into()))
        .collect();
    let value = |key: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("A"), Some("from-table"));
    assert_eq!(value("B"), Some("quoted value"));
    assert_eq!(value("C"), Some("more"));
}

#[test]
fn a_missing_or_broken_env_file_is_a_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("bad.env"), "OK=1\nnot a line\n").unwrap();
    let result = parse(
        &dir.path().join("tend.toml"),
        r#"
[process.a]
command = "a"
env_file = "missing.env"

[process.b]
command = "b"
env_file = "bad.env"
"#,
    );
    let Err(ConfigError::Invalid { problems, .. }) = result else {
        panic!("accepted")
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(problems[0].line, Some(4));
    assert!(
        problems[0].message.contains("missing.env"),
        "{}",
        problems[0].message
    );
    assert_eq!(problems[1].line, Some(8));
    assert!(
        problems[1].message.contains("bad.env:2"),
        "{}",
        problems[1].message
    );
}

#[test]
fn identity_umask_and_rlimits_are_read() {
    let config = parsed(
        r#"
[process.a]
command = "a"
user = "root"
group = 0
supplementary_groups = ["root", 4242, "65534"]
umask = "027"

[process.a.rlimits]
nofile = { soft = 1024, hard = 4096 }
core = 0
stack = "unlimited"
"#,
    );
    let a = &config.processes[0];
    assert_eq!(a.user, Some(tend::IdOrName::Name("root".into())));
    assert_eq!(a.group, Some(tend::IdOrName::Id(0)));
    assert_eq!(
        a.supplementary_groups,
        [
            tend::IdOrName::Name("root".into()),
            tend::IdOrName::Id(4242),
            tend::IdOrName::Id(65534)
        ]
    );
    assert_eq!(a.umask, Some(0o027));
    let limits: Vec<_> = a.rlimits.iter().map(|(r, v)| (*r, *v)).collect();
    assert_eq!(
        limits,
        [
            (Rlimit::Core, RlimitValue::both(Some(0))),
            (
                Rlimit::Nofile,
                RlimitValue {
                    soft: Some(1024),
                    hard: Some(4096)
                }
            ),
            (Rlimit::Stack, RlimitValue::both(None)),
        ]
    );
}

#[test]
fn bad_identity_umask_and_rlimits_have_their_line_and_key() {
    let text = r#"[process.a]
command = "a"
user = "no-such-user-tend"
group = -1
supplementary_groups = ["ok", true]
umask = 27

[process.b]
command = "b"
umask = "0800"
[process.b.rlimits]
files = 10
nofile = { soft = 10 }

[process.c]
command = "c"
[process.c.rlimits]
core = { soft = 10, hard = 5 }
"#;
    assert_eq!(
        places(text),
        [
            (Some(3), "process.a.user".into()),
            (Some(4), "process.a.group".into()),
            (Some(5), "process.a.supplementary_groups[1]".into()),
            (Some(6), "process.a.umask".into()),
            (Some(10), "process.b.umask".into()),
            (Some(12), "process.b.rlimits.files".into()),
            (Some(13), "process.b.rlimits.nofile".into()),
            (Some(17), "process.c.rlimits".into()),
        ]
    );
    let messages: Vec<String> = problems(text).into_iter().map(|p| p.message).collect();
    assert!(
        messages[0].contains("no user named \"no-such-user-tend\""),
        "{}",
        messages[0]
    );
    assert!(messages[3].contains("octal digits"), "{}", messages[3]);
    assert!(messages[5].contains("one of as, core"), "{}", messages[5]);
    assert!(
        messages[6].contains("needs both soft and hard"),
        "{}",
        messages[6]
    );
    assert!(
        messages[7].contains("soft limit must not be above the hard one"),
        "{}",
        messages[7]
    );
}
