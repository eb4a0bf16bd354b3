//! Abuse of inputs: arbitrary configs never panic, never start a process
//! when invalid, and always say what is wrong; awkward but valid values
//! reach the daemon intact.

use std::{ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf, time::Duration};

use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use tend::{BackgroundProcessConfig, Error, HealthCheck};

use crate::harness::*;

fn os(bytes: Vec<u8>) -> OsString {
    OsString::from_vec(bytes)
}

/// Bytes that are mostly harmless, with the characters that break things
/// (`/`, `.`, `=`, NUL, newline, non-ASCII) well represented.
fn nasty_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => proptest::sample::select(b"abcXYZ019-_".to_vec()),
            1 => proptest::sample::select(b"/.=\0\n \xff\xc3".to_vec()),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{1,64}",
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("a/b".to_owned()),
        Just("../up".to_owned()),
        Just("nul\0byte".to_owned()),
        Just("n".repeat(65)),
        Just("n".repeat(4096)),
        nasty_bytes(80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Socket paths: around the 107-byte limit, relative, or arbitrary bytes.
fn socket(dir: PathBuf) -> impl Strategy<Value = Option<PathBuf>> {
    let near_limit = (100usize..112).prop_map(move |len| {
        let prefix = format!("{}/", dir.display());
        let filler = len.saturating_sub(prefix.len()).max(1);
        Some(PathBuf::from(format!("{prefix}{}", "s".repeat(filler))))
    });
    prop_oneof![
        Just(None),
        near_limit,
        Just(Some(PathBuf::from("relative.sock"))),
        Just(Some(PathBuf::from("/"))),
        nasty_bytes(140).prop_map(|b| Some(PathBuf::from(os(b)))),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (1u64..5_000).prop_map(Duration::from_millis),
        Just(Duration::MAX),
    ]
}

/// A config running `testd` with `--record-start FILE` (so any spawn
/// leaves a line in FILE) and every other field drawn at random.
fn config(dir: PathBuf, record: PathBuf) -> impl Strategy<Value = BackgroundProcessConfig> {
    let missing_dir = dir.join("no-such-dir");
    let command = prop_oneof![
        8 => Just(PathBuf::from(testd())),
        1 => Just(PathBuf::new()),
        1 => Just(PathBuf::from("test\0d")),
    ];
    let extra_args = vec(nasty_bytes(12), 0..3);
    let env = vec((nasty_bytes(10), nasty_bytes(20)), 0..4);
    let plugin_path = prop_oneof![Just(None), Just(Some(dir.clone())), Just(Some(missing_dir)),];
    let healthcheck = proptest::option::of(
        (duration(), duration(), 0u32..4)
            .prop_map(|(interval, timeout, retries)| HealthCheck::new(interval, timeout, retries)),
    );
    let log_file = prop_oneof![
        Just(None),
        Just(Some(PathBuf::new())),
        Just(Some(PathBuf::from("/"))),
        Just(Some(dir.join("d.log"))),
    ];
    let events = vec(prop_oneof![Just(String::new()), "[a-z]{1,8}"], 0..3);
    (
        (name(), command, extra_args, socket(dir), env, plugin_path),
        (
            duration(),
            duration(),
            healthcheck,
            duration(),
            log_file,
            events,
        ),
    )
        .prop_map(
            move |(
                (name, command, extra_args, socket, env, plugin_path),
                (startup, grace, healthcheck, stable, log_file, events),
            )| {
                let mut config = BackgroundProcessConfig::new(name, command)
                    .args([OsString::from("--record-start"), record.clone().into()])
                    .args(extra_args.into_iter().map(os))
                    .envs(env.into_iter().map(|(k, v)| (os(k), os(v))))
                    .startup_timeout(startup)
                    .shutdown_grace_period(grace)
                    .stable_period(stable)
                    .events(events);
                config.socket_path = socket;
                config.plugin_path = plugin_path;
                config.healthcheck = healthcheck;
                config.log_file = log_file;
                config
            },
        )
}

/// Asserts what an invalid config must give: `InvalidConfig` listing at
/// least one problem, each naming its field and saying what is wrong.
fn assert_clear(error: &Error) -> Result<(), TestCaseError> {
    let Error::InvalidConfig { problems, .. } = error else {
        return Err(TestCaseError::fail(format!("not InvalidConfig: {error:?}")));
    };
    prop_assert!(!problems.is_empty());
    let text = error.to_string();
    for problem in problems.iter() {
        prop_assert!(!problem.field.is_empty() && !problem.message.is_empty());
        prop_assert!(text.contains(problem.field), "{text}");
    }
    Ok(())
}

/// Arbitrary configs: `validate` never panics; an invalid one is refused
/// by `start_process` with a clear error, registers nothing and spawns
/// nothing.
#[test]
fn invalid_configs_are_refused_clearly_and_never_spawn() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sb = Sandbox::new();
    let record = sb.path("spawns");
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(512)
    });
    let invalid = std::cell::Cell::new(0u32);
    runner
        .run(
            &config(sb.dir.path().to_owned(), record.clone()),
            |config| {
                let Err(error) = config.validate() else {
                    return Ok(());
                };
                invalid.set(invalid.get() + 1);
                assert_clear(&error)?;
                let name = config.name.clone();
                let started = runtime.block_on(sb.manager.start_process(config));
                match started {
                    Err(e) => assert_clear(&e)?,
                    Ok(()) => return Err(TestCaseError::fail("an invalid config was started")),
                }
                prop_assert_eq!(sb.manager.state(&name).ok(), None);
                prop_assert!(lines(&record).is_empty(), "a process was spawned");
                Ok(())
            },
        )
        .unwrap();
    let invalid = invalid.get();
    assert!(
        invalid > 100,
        "only {invalid} invalid configs were generated"
    );
    assert!(sb.manager.list().is_empty());
}

/// Valid configs with awkward values: names of every allowed character
/// and length, socket paths up to the limit, environment values of any
/// bytes but NUL.
fn valid_config(dir: PathBuf, record: PathBuf) -> impl Strategy<Value = BackgroundProcessConfig> {
    let socket = prop_oneof![
        Just(None),
        (95usize..=107).prop_map({
            let dir = dir.clone();
            move |len| {
                let prefix = format!("{}/", dir.display());
                Some(PathBuf::from(format!(
                    "{prefix}{}",
                    "s".repeat(len - prefix.len())
                )))
            }
        }),
    ];
    let env = vec(
        (
            "[A-Za-z_][A-Za-z0-9_]{0,8}",
            nasty_bytes(40).prop_map(|b| b.into_iter().filter(|&c| c != 0).collect::<Vec<u8>>()),
        ),
        0..4,
    );
    let plugin_path = prop_oneof![Just(None), Just(Some(dir.clone()))];
    (
        "[A-Za-z0-9._-]{1,64}".prop_filter("not . or ..", |n| n != "." && n != ".."),
        socket,
        env,
        plugin_path,
    )
        .prop_map(move |(name, socket, env, plugin_path)| {
            let mut config = BackgroundProcessConfig::new(name, testd())
                .args([OsString::from("--record-start"), record.clone().into()])
                .envs(env.into_iter().map(|(k, v)| (OsString::from(k), os(v))))
                .startup_timeout(Duration::from_secs(20))
                .shutdown_grace_period(Duration::from_secs(5));
            config.socket_path = socket;
            config.plugin_path = plugin_path;
            config
        })
}

/// Valid configs with awkward values start, run and stop: nothing that
/// validation accepts breaks tend.
#[test]
fn valid_configs_with_awkward_values_start_run_and_stop() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sb = Sandbox::new();
    let record = sb.path("spawns");
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(24)
    });
    runner
        .run(&valid_config(sb.dir.path().to_owned(), record), |config| {
            prop_assert!(config.validate().is_ok(), "{:?}", config.validate());
            let name = config.name.clone();
            let socket = config.socket_path.clone();
            runtime.block_on(async {
                sb.manager
                    .start_process(config)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{name:?}: {e}")))?;
                let daemon = Tracked::new(sb.manager.pid(&name).ok().flatten().expect("a pid"));
                if let Some(socket) = socket {
                    ping(&socket)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("ping {socket:?}: {e}")))?;
                }
                sb.manager
                    .stop_process(&name)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("stop {name:?}: {e}")))?;
                prop_assert!(!daemon.alive());
                Ok(())
            })
        })
        .unwrap();
}

/// Environment values may hold newlines; they reach the daemon intact.
#[tokio::test]
async fn environment_value_with_newlines_reaches_the_daemon_intact() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &["--print-env", "MULTI", "--stdout", "end"])
        .env("MULTI", "one\ntwo\n\nthree");
    let _daemon = sb.start(config).await;
    sb.wait_for_stdout("a", "end").await;
    assert_eq!(
        sb.log_texts("a", tend::Stream::Stdout),
        ["env MULTI=one", "two", "", "three", "end"]
    );
}

/// One duration setting of a config.
type Setting = fn(BackgroundProcessConfig, Duration) -> BackgroundProcessConfig;

/// Durations so long that `now + duration` overflows: validation must
/// refuse them, or tend must honour them (saturating) — never panic its
/// supervisor task, which would leave the daemon running unsupervised
/// while `stop_process` returns `Ok` and the state stays `Running`.
#[tokio::test]
async fn absurdly_long_durations_are_refused_or_honoured_without_panic() {
    let settings: [(&str, Setting); 6] = [
        ("startup_timeout", |c, d| c.startup_timeout(d)),
        ("shutdown_grace_period", |c, d| c.shutdown_grace_period(d)),
        ("stable_period", |c, d| c.stable_period(d)),
        ("restart_delay", |c, d| c.restart_delay(d)),
        ("healthcheck.interval", |c, d| {
            let mut check = HealthCheck::default();
            check.interval = d;
            c.healthcheck(check)
        }),
        ("healthcheck.timeout", |c, d| {
            c.healthcheck(HealthCheck::new(Duration::from_millis(50), d, 1))
        }),
    ];
    let mut failures = Vec::new();
    for (field, set) in settings {
        let sb = Sandbox::new();
        let starts = sb.path("starts");
        let config = set(
            sb.daemon("a", &["--record-start", starts.to_str().unwrap()]),
            Duration::MAX,
        );
        let started = within("start", SOON, sb.manager.start_process(config)).await;
        match started {
            Err(Error::InvalidConfig { .. }) => continue,
            Err(e) => failures.push(format!("{field}: start failed with {e}")),
            Ok(()) => {
                // Exercise the restart path, then stop.
                if let Some(pid) = sb.manager.pid("a").ok().flatten() {
                    Tracked::new(pid).signal(rustix::process::Signal::KILL);
                }
                let stopped = within("stop", SOON, sb.manager.stop_process("a")).await;
                let state = sb.manager.state("a").ok();
                if stopped.is_err() || state != Some(tend::ProcessState::Stopped) {
                    failures.push(format!("{field}: stop gave {stopped:?}, state {state:?}"));
                }
            }
        }
        let alive: Vec<u32> = pids_in(&lines(&starts), "")
            .into_iter()
            .filter(|&p| alive(p))
            .collect();
        if !alive.is_empty() {
            failures.push(format!("{field}: left running unsupervised: {alive:?}"));
            for pid in alive {
                Tracked::new(pid).signal(rustix::process::Signal::KILL);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
