//! Fault cases: whatever happens to a daemon or to its manager, no daemon
//! is left running unsupervised, no unrelated process is touched, and the
//! state tend reports is the truth.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    time::{Duration, Instant},
};

use rustix::process::Signal;
use tend::{ExitStatus, HealthCheck, HealthProbe, ProcessState, Stream, defaults};

use crate::{harness::*, support::*};

fn fast_checks() -> HealthCheck {
    HealthCheck::new(Duration::from_millis(100), Duration::from_millis(100), 2)
}

/// Waits until `name` runs under a PID other than `old`; returns the new.
async fn wait_replaced(sb: &Sandbox, name: &str, old: u32) -> u32 {
    let mut pid = None;
    wait_for(&format!("{name} to run under a new pid"), SOON, || {
        pid = sb.manager.pid(name).ok().flatten().filter(|&p| p != old);
        sb.manager.is_running(name) && pid.is_some()
    })
    .await;
    pid.unwrap()
}

async fn wait_state(sb: &Sandbox, name: &str, state: ProcessState) {
    wait_for(&format!("{name} to be {state}"), SOON, || {
        sb.manager.state(name).ok() == Some(state)
    })
    .await;
}

// ---- kill -9 of the manager -------------------------------------------

/// The daemons of a killed app that should die of their parent-death
/// signal do so within a second; what survives (a daemon ignoring SIGTERM,
/// children in a daemon's group, a double-forked escapee) is found by
/// walking `/proc`. The next manager's cleanup stops the daemon and its
/// group, and reports the escapee as a suspect, alive: it carries the dead
/// manager's `TEND_MANAGER_ID`, but once reparented nothing in process
/// groups proves it descends from the daemon (the marker alone may only
/// report). Cgroup containment, being added separately, is what proves and
/// kills such an escapee; the test kills it itself.
#[tokio::test]
async fn killed_apps_daemons_die_within_a_second_and_cleanup_stops_or_reports_the_reparented_escapee()
 {
    let sb = Sandbox::new();
    let mut app = Embedder::start(
        &sb.state_dir(),
        sb.dir.path(),
        &[
            "plain",
            "forker --fork-children 2",
            "stubborn --ignore-sigterm",
            "escaper --double-fork",
        ],
    )
    .await;
    // 4 daemons, 2 children and 1 escapee: the grandchild of the double
    // fork, in no daemon's group and in the session its parent (the
    // middle process, which exits at once) created.
    let leaders: Vec<i32> = app.daemons.iter().map(|d| d.1 as i32).collect();
    let mut escapee = 0;
    wait_for("every daemon's descendants", SOON, || {
        let all = marked(&app.marker);
        let outsiders: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&pid| proc_stat(pid).is_some_and(|s| !leaders.contains(&s.pgid)))
            .collect();
        match outsiders[..] {
            [one] if all.len() == 7 && proc_stat(one).is_some_and(|s| s.sid != one as i32) => {
                escapee = one;
                true
            }
            _ => false,
        }
    })
    .await;
    let dying: Vec<Tracked> = ["plain", "forker", "escaper"]
        .iter()
        .map(|name| Tracked::new(app.daemon(name)))
        .collect();

    app.kill().await;
    let killed_at = Instant::now();
    wait_for(
        "the daemons of a killed app to die",
        Duration::from_secs(1),
        || dying.iter().all(|d| !d.alive()),
    )
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Survivors: the stubborn daemon, the forker's two children, the escapee.
    let survivors = marked(&app.marker);
    assert_eq!(survivors.len(), 4, "survivors {survivors:?}");
    assert!(survivors.contains(&app.daemon("stubborn")));
    assert!(survivors.contains(&escapee));

    let escapee = Tracked::new(escapee);

    let report = sb.manager.cleanup_orphans().await.unwrap();
    let mut killed = report.killed.clone();
    killed.sort();
    if containment_here().await == tend::Containment::Cgroup {
        // The escapee left its daemon's group and session but not its
        // cgroup: it is stopped with what is left of "escaper".
        assert_eq!(killed, ["escaper", "forker", "stubborn"], "{report:?}");
        assert_eq!(report.escaped, [escapee.pid], "{report:?}");
        assert!(report.suspects.is_empty(), "{report:?}");
        escapee
            .wait_dead("the escapee in its daemon's cgroup")
            .await;
        let left = marked(&app.marker);
        assert!(left.is_empty(), "alive after cleanup: {left:?}");
        return;
    }
    assert_eq!(killed, ["forker", "stubborn"], "{report:?}");
    assert!(report.escaped.is_empty(), "{report:?}");
    assert_eq!(report.suspects, [escapee.pid], "{report:?}");
    let left = marked(&app.marker);
    assert_eq!(left, [escapee.pid], "alive after cleanup: {left:?}");
    assert!(escapee.alive());
    escapee.signal(Signal::KILL);
    escapee.wait_dead("the reported escapee").await;
}

/// A descendant that left its daemon's group and session but is still
/// the daemon's child is proven to descend from it: cleanup kills it with
/// the daemon and reports it as escaped.
#[tokio::test]
async fn escapee_still_below_its_daemon_is_killed_by_cleanup() {
    let sb = Sandbox::new();
    let mut app = Embedder::start(
        &sb.state_dir(),
        sb.dir.path(),
        &["stubborn --ignore-sigterm --detach-child"],
    )
    .await;
    let leader = app.daemon("stubborn");
    let mut detached = 0;
    wait_for("the detached child", SOON, || {
        let all = marked(&app.marker);
        match all.iter().find(|&&p| p != leader) {
            Some(&child) if all.len() == 2 => {
                detached = child;
                proc_stat(child).is_some_and(|s| s.sid == child as i32)
            }
            _ => false,
        }
    })
    .await;
    let detached = Tracked::new(detached);
    app.kill().await;
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["stubborn"], "{report:?}");
    assert_eq!(report.escaped, [detached.pid], "{report:?}");
    assert!(report.suspects.is_empty(), "{report:?}");
    detached.wait_dead("the detached child").await;
    let left = marked(&app.marker);
    assert!(left.is_empty(), "alive after cleanup: {left:?}");
}

/// The next start of a name stops what the killed app left of it before it
/// spawns anew. A double-forked escapee of that daemon, reparented, is
/// stopped with it under cgroup containment (it never leaves the daemon's
/// cgroup); with process groups nothing proves it descends from the
/// daemon: it is reported (a warning) and left alive, and the test kills
/// it itself.
#[tokio::test]
async fn next_start_stops_the_survivors_of_a_killed_app_and_its_escapee_where_proven() {
    let sb = Sandbox::new();
    let mut app = Embedder::start(
        &sb.state_dir(),
        sb.dir.path(),
        &["stubborn --ignore-sigterm --double-fork"],
    )
    .await;
    let leader = app.daemon("stubborn");
    // The double fork's grandchild, not its middle process (which leads
    // the new session and exits at once).
    wait_for("the escapee", SOON, || {
        let all = marked(&app.marker);
        all.len() == 2
            && all
                .iter()
                .all(|&p| p == leader || proc_stat(p).is_some_and(|s| s.sid != p as i32))
    })
    .await;
    let escapee = Tracked::new(*marked(&app.marker).iter().find(|&&p| p != leader).unwrap());
    app.kill().await;
    let old = Tracked::new(app.daemon("stubborn"));
    let new = sb.start(sb.daemon("stubborn", &[])).await;
    assert!(!old.alive(), "the old daemon survived the new start");
    let left = marked(&app.marker);
    assert!(new.alive());
    if containment_here().await == tend::Containment::Cgroup {
        assert!(left.is_empty(), "alive after the new start: {left:?}");
        return;
    }
    assert_eq!(left, [escapee.pid], "alive after the new start: {left:?}");
    escapee.signal(Signal::KILL);
    escapee.wait_dead("the unproven escapee").await;
}

// ---- two managers, one state directory ---------------------------------

/// Managers sharing a state directory never kill each other's live
/// daemons, also when one of them dies and another cleans up after it.
#[tokio::test]
async fn managers_sharing_a_state_directory_leave_each_others_daemons_alone() {
    let sb = Sandbox::new();
    let (dir_a, dir_b) = (sb.path("a"), sb.path("b"));
    std::fs::create_dir(&dir_a).unwrap();
    std::fs::create_dir(&dir_b).unwrap();
    let specs = ["x", "y --ignore-sigterm"];
    let mut first = Embedder::start(&sb.state_dir(), &dir_a, &specs).await;
    let second = Embedder::start(&sb.state_dir(), &dir_b, &specs).await;
    let first_daemons: Vec<Tracked> = first.daemons.iter().map(|d| Tracked::new(d.1)).collect();
    let second_daemons: Vec<Tracked> = second.daemons.iter().map(|d| Tracked::new(d.1)).collect();
    assert!(
        first_daemons.iter().all(Tracked::alive),
        "the second start killed the first's daemons"
    );

    // A third manager cleans up and starts a daemon of the same name.
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.owned_by_live_manager.len(), 4, "{report:?}");
    assert!(
        report.killed.is_empty() && report.escaped.is_empty(),
        "{report:?}"
    );
    let _third = sb.start(sb.daemon("x", &[])).await;
    assert!(
        first_daemons
            .iter()
            .chain(&second_daemons)
            .all(Tracked::alive)
    );

    // One manager dies: only its survivor is cleaned.
    first.kill().await;
    first_daemons[0].wait_dead("x of the killed manager").await;
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["y"], "{report:?}");
    assert!(!first_daemons[1].alive());
    assert!(
        second_daemons.iter().all(Tracked::alive),
        "the live manager's daemons were killed"
    );
    assert!(marked(&first.marker).is_empty());
}

// ---- PID reuse -----------------------------------------------------------

/// A record of a dead manager names a daemon that is long gone; its PID
/// was reused by an unrelated process of the same session that leads its
/// own group, forked, and exited — leaving a live member of a group whose
/// id equals the recorded PID. Nothing proves that member descends from
/// the recorded daemon, so cleanup must spare it.
#[tokio::test]
async fn unrelated_group_reusing_a_dead_daemons_pid_is_spared_by_cleanup() {
    let sb = Sandbox::new();
    let mut stranger = Spawned::testd(&["--fork-children", "1"]);
    let leader = stranger.pid();
    let leader_start = proc_stat(leader).unwrap().start_time;
    let mut members = Vec::new();
    wait_for("the stranger's child", SOON, || {
        members = group_members(leader);
        members.len() == 2
    })
    .await;
    let member = Tracked::new(*members.iter().find(|&&p| p != leader).unwrap());
    // The stranger's leader exits; its child stays in group `leader`.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(leader as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    stranger.child.wait().unwrap();

    let dead_owner = dead_pid();
    let record = serde_json::json!({
        "name": "old",
        "pid": leader,
        "pgid": leader,
        "sid": proc_stat(std::process::id()).unwrap().sid,
        // The recorded daemon ran before the stranger existed.
        "start_time": leader_start.saturating_sub(1),
        "owner_pid": dead_owner,
        "owner_start_time": 1,
        "socket_path": null,
        "grace_ms": 100,
    });
    std::fs::create_dir_all(sb.orphans_dir()).unwrap();
    std::fs::write(
        sb.orphans_dir().join(format!("{dead_owner}.1.0.journal")),
        format!("{}\n", serde_json::json!({ "add": record })),
    )
    .unwrap();
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert!(
        member.alive(),
        "cleanup killed an unrelated process ({report:?})"
    );
    assert_eq!(report.stale, ["old"], "{report:?}");
}

// ---- cleanup's own process and its speed -----------------------------------

/// The issue's case: a `tend up` re-run from a shell that descends from
/// the killed run's daemons killed itself (exit 143), since cleanup killed
/// every process carrying the dead manager's `TEND_MANAGER_ID`. Here the
/// surviving daemon is a shell, recorded in the dead manager's journal and
/// carrying its marker; it runs an app in a session of its own (as a
/// shell runs a job), which starts a daemon of the same name and so
/// cleans that record first. The app does not kill itself nor the shell
/// above it, and its start succeeds.
#[tokio::test]
async fn cleanup_run_from_a_descendant_of_a_dead_managers_daemon_spares_itself_and_its_ancestors() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let sb = Sandbox::new();
    let dead = dead_pid();
    // A manager started at boot: every process started after it.
    let id = format!("{dead}.1");
    let marker = format!("{}={id}", tend::MANAGER_ID_ENV);
    let mut shell = tokio::process::Command::new("sh")
        .arg("-c")
        // Waits for the go-ahead, then runs the app as its child.
        .arg(r#"read go; "$0" "$@"; exit $?"#)
        .arg(embedder())
        .arg(sb.state_dir())
        .arg(sb.dir.path())
        .arg(testd())
        .arg("x")
        .env(tend::MANAGER_ID_ENV, &id)
        .env("TEND_EMBEDDER_SETSID", "1")
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sh");
    let _cleanup = KillMarked(marker.clone());
    let shell_pid = shell.id().unwrap();
    let stat = proc_stat(shell_pid).unwrap();
    let record = serde_json::json!({
        "name": "x",
        "pid": shell_pid,
        "pgid": shell_pid,
        "sid": stat.sid,
        "start_time": stat.start_time,
        "owner_pid": dead,
        "owner_start_time": 1,
        "socket_path": null,
        "grace_ms": 500,
    });
    std::fs::create_dir_all(sb.orphans_dir()).unwrap();
    std::fs::write(
        sb.orphans_dir().join(format!("{id}.0.journal")),
        format!("{}\n", serde_json::json!({ "add": record })),
    )
    .unwrap();

    let mut stdin = shell.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let mut out = BufReader::new(shell.stdout.take().unwrap()).lines();
    let mut daemon = None;
    loop {
        let line = within("the app to start x", SOON, out.next_line())
            .await
            .unwrap();
        let Some(line) = line else {
            let status = shell.wait().await.unwrap();
            panic!("the app or its shell was killed by its own cleanup: the shell {status}");
        };
        if line == "ready" {
            break;
        }
        let pid = line.strip_prefix("started x ").expect("started x <pid>");
        daemon = Some(Tracked::new(pid.parse().unwrap()));
    }
    assert!(daemon.is_some_and(|d| d.alive()));
    let left = marked(&marker);
    assert_eq!(left.len(), 2, "the shell and the app: {left:?}");
    assert!(left.contains(&shell_pid), "the shell was killed: {left:?}");
    assert!(shell.try_wait().unwrap().is_none());
}

/// SIGKILLs every process carrying the marker when dropped.
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

/// Five daemons that ignore SIGTERM outlive their killed app. With a 2 s
/// grace period each, the next cleanup signals them all at once and stops
/// them in one grace period, not one after the other (10 s).
#[tokio::test]
async fn five_sigterm_ignoring_orphans_are_cleaned_in_one_grace_period() {
    let sb = Sandbox::new();
    let specs: Vec<String> = (0..5).map(|i| format!("s{i} --ignore-sigterm")).collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut app = Embedder::start_with_env(
        &sb.state_dir(),
        sb.dir.path(),
        &specs,
        &[("TEND_EMBEDDER_GRACE_MS", "2000")],
    )
    .await;
    let orphans: Vec<Tracked> = app.daemons.iter().map(|d| Tracked::new(d.1)).collect();
    app.kill().await;
    let started = Instant::now();
    let report = sb.manager.cleanup_orphans().await.unwrap();
    let took = started.elapsed();
    eprintln!("cleaning five SIGTERM-ignoring orphans with a 2 s grace period took {took:?}");
    assert_eq!(report.killed.len(), 5, "{report:?}");
    assert!(orphans.iter().all(|o| !o.alive()));
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

// ---- crash loops -----------------------------------------------------------

/// A daemon that came up once and then exits at once on every restart is
/// spawned exactly `1 + max_restart_attempts` times, ends in `Error` with
/// the reason, and is never spawned again.
#[tokio::test]
async fn crash_loop_spawns_exactly_one_plus_max_restart_attempts_then_error() {
    let sb = Sandbox::new();
    let starts = sb.path("starts");
    let once = sb.path("once");
    let config = sb
        .daemon(
            "a",
            &[
                "--exit-immediately",
                "--exit-code",
                "3",
                "--stderr",
                "cannot go on",
                "--healthy-once",
                once.to_str().unwrap(),
                "--record-start",
                starts.to_str().unwrap(),
            ],
        )
        .max_restart_attempts(3);
    let mut events = sb.manager.subscribe();
    let first = sb.start(config).await;
    first.signal(Signal::KILL);
    wait_state(&sb, "a", ProcessState::Error).await;
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.pid, None);
    assert_eq!(info.last_exit, Some(ExitStatus::Code(3)));
    let reason = info.last_error.unwrap();
    assert!(
        reason.contains("code 3")
            && reason.contains("gave up after 3 restarts")
            && reason.contains("cannot go on"),
        "{reason}"
    );
    let mut moves = Vec::new();
    while let Some(e) = events.try_recv() {
        moves.push((e.from, e.to));
    }
    use ProcessState::{Error, Running, Starting, Stopped};
    assert_eq!(
        moves,
        [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Starting),
            (Starting, Starting),
            (Starting, Starting),
            (Starting, Error)
        ]
    );
    // The point of this wait is time passing: a runaway supervisor would
    // keep spawning; none may come after `Error`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spawned = pids_in(&lines(&starts), "");
    assert_eq!(spawned.len(), 1 + 3, "spawns: {spawned:?}");
    assert!(spawned.iter().all(|&p| !alive(p)));
}

// ---- hung daemons ------------------------------------------------------------

/// A daemon that stalls in its SIGTERM handler is SIGKILLed when the grace
/// period ends, and its leftover socket file is removed.
#[tokio::test]
async fn daemon_stalling_in_its_sigterm_handler_is_killed_at_the_end_of_the_grace_period() {
    let sb = Sandbox::new();
    let grace = Duration::from_millis(500);
    let daemon = sb
        .start(
            sb.daemon("a", &["--term-delay", "600000"])
                .shutdown_grace_period(grace),
        )
        .await;
    let began = Instant::now();
    within("stop", SOON, sb.manager.stop_process("a"))
        .await
        .unwrap();
    let took = began.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period ended"
    );
    assert!(!daemon.alive());
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Stopped);
    assert_eq!(info.last_exit, Some(ExitStatus::Signal(9)));
    assert!(!sb.socket("a").exists(), "the socket file was left behind");
}

/// Freezes a daemon checked with `probe` by SIGSTOP and waits for the
/// checks to replace it; the recorded reason contains `reason`.
async fn assert_frozen_daemon_replaced(probe: HealthProbe, reason: &str) {
    let sb = Sandbox::new();
    let first = sb
        .start(
            sb.daemon("a", &[])
                .healthcheck(fast_checks())
                .health_probe(probe)
                .shutdown_grace_period(Duration::from_millis(300)),
        )
        .await;
    first.signal(Signal::STOP);
    let second = wait_replaced(&sb, "a", first.pid).await;
    first.wait_dead("the frozen daemon").await;
    let recorded = sb.manager.process_info("a").unwrap().last_error.unwrap();
    assert!(recorded.contains(reason), "{recorded}");
    assert!(Tracked::new(second).alive());
}

/// A daemon frozen by SIGSTOP keeps its listener, so connects still
/// succeed; the ping probe notices that it no longer answers and replaces it.
#[tokio::test]
async fn frozen_daemon_is_replaced_by_ping_health_checks() {
    assert_frozen_daemon_replaced(HealthProbe::Ping, "health check").await;
}

/// With accept checks too: a frozen daemon's listener still queues
/// connections, so no connect fails until its backlog is full; an accept
/// check plants a connection and sees it wait unaccepted.
#[tokio::test]
async fn frozen_daemon_is_replaced_by_accept_health_checks() {
    assert_frozen_daemon_replaced(HealthProbe::Accept, "waited").await;
}

/// The connections accept checks plant are accepted by a healthy daemon
/// and never count against it: after several of them, not one check failed
/// (a single failure would replace it) and it still serves.
#[tokio::test]
async fn planted_check_connections_do_not_fail_a_healthy_daemon() {
    let sb = Sandbox::new();
    let checks = HealthCheck::new(Duration::from_millis(10), Duration::from_millis(500), 1);
    let daemon = sb
        .start(
            sb.daemon("a", &["--log-accepts"])
                .healthcheck(checks)
                .health_probe(HealthProbe::Accept),
        )
        .await;
    // The start's own readiness connect is the first; three more are
    // planted ones.
    wait_for("planted connections to be accepted", SOON, || {
        sb.log_texts("a", Stream::Stdout)
            .iter()
            .filter(|l| *l == "accepted")
            .count()
            >= 4
    })
    .await;
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.pid, Some(daemon.pid));
    assert_eq!(info.restart_attempts, 0);
    assert_eq!(info.failed_health_checks, 0);
    ping(&sb.socket("a")).await.expect("still serving");
}

// ---- output ----------------------------------------------------------------------

/// A daemon that closes stdout and stderr goes on serving; tend keeps it
/// `Running` and stops it as usual.
#[tokio::test]
async fn daemon_that_closes_its_output_keeps_running_and_stops_cleanly() {
    let sb = Sandbox::new();
    let daemon = sb
        .start(
            sb.daemon("a", &["--stdout", "last words", "--close-stdio"])
                .healthcheck(fast_checks())
                .health_probe(HealthProbe::Ping),
        )
        .await;
    sb.wait_for_stdout("a", "last words").await;
    let reply = ping(&sb.socket("a")).await.expect("still serving");
    assert!(reply.contains("pong"), "{reply}");
    assert!(sb.manager.is_running("a"));
    assert_eq!(sb.manager.pid("a").ok().flatten(), Some(daemon.pid));
    let began = Instant::now();
    sb.manager.stop_process("a").await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "waited out the grace period"
    );
    assert!(!daemon.alive());
}

/// Pings daemon `name` of `sb` within `deadline`. testd serves only once
/// its flood is written, so the reply proves the flood went through
/// without blocking it.
async fn flooding_daemon_answers(sb: &Sandbox, name: &str, deadline: Duration) -> String {
    within(
        "the flooding daemon to answer",
        deadline,
        ping(&sb.socket(name)),
    )
    .await
    .expect("the flooding daemon accepts")
}

/// Gigabytes without a newline go through the pipe without blocking the
/// daemon, and the app embedding tend stays small.
#[tokio::test]
async fn gigabytes_without_a_newline_neither_block_the_daemon_nor_bloat_the_app() {
    let sb = Sandbox::new();
    let app = Embedder::start(
        &sb.state_dir(),
        sb.dir.path(),
        &["f --flood 2000000000 --flood-no-newline"],
    )
    .await;
    let _daemon = Tracked::new(app.daemon("f"));
    // testd serves only once its flood is written: a pong proves 2 GB went
    // through without blocking it.
    let reply = flooding_daemon_answers(&sb, "f", Duration::from_secs(300)).await;
    assert!(reply.contains("pong"), "{reply}");
    let peak = app.peak_rss_kib();
    eprintln!("the app's peak RSS after a 2 GB flood: {peak} KiB");
    assert!(peak < 32 * 1024, "the app peaked at {peak} KiB");
}

/// Lines of invalid UTF-8 are kept, replaced and bounded.
#[tokio::test]
async fn flood_of_invalid_utf8_is_replaced_and_bounded() {
    let sb = Sandbox::new();
    let _daemon = sb
        .start(sb.daemon("a", &["--flood", "20000000", "--flood-invalid-utf8"]))
        .await;
    flooding_daemon_answers(&sb, "a", Duration::from_secs(120)).await;
    let kept = sb.manager.logs("a", usize::MAX).unwrap();
    assert!(
        kept.len() <= defaults::LOG_RING_LINES,
        "{} lines",
        kept.len()
    );
    let last = &kept.last().expect("lines were captured").text;
    assert!(last.starts_with('\u{fffd}'), "{last:?}");
}

/// A flood into a log file rotates it: what is on disk stays bounded.
#[tokio::test]
async fn flood_into_a_log_file_keeps_disk_use_bounded() {
    let sb = Sandbox::new();
    let logs = sb.path("logs");
    let _daemon = sb
        .start(
            sb.daemon("a", &["--flood", "60000000"])
                .log_file(logs.join("a.log")),
        )
        .await;
    flooding_daemon_answers(&sb, "a", Duration::from_secs(120)).await;
    // 60 MB of lines have been read once the last one is in the ring.
    wait_for("the last flood line", SOON, || {
        sb.log_texts("a", Stream::Stdout).len() == defaults::LOG_RING_LINES
    })
    .await;
    let files: Vec<(String, u64)> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert!(
        files.len() as u32 <= 1 + defaults::LOG_FILE_KEEP,
        "{files:?}"
    );
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(
        total <= (1 + defaults::LOG_FILE_KEEP as u64) * defaults::LOG_FILE_MAX_BYTES,
        "{total} bytes on disk: {files:?}"
    );
    assert!(files.iter().any(|f| f.0 == "a.log.3"), "{files:?}");
}

// ---- the socket directory ------------------------------------------------------

/// The socket's folder deleted under a running daemon: health checks fail,
/// the daemon is restarted, and tend recreates the folder for it.
#[tokio::test]
async fn deleted_socket_directory_is_recreated_by_the_restart() {
    let sb = Sandbox::new();
    let socket = sb.path("run/a.sock");
    let first = sb
        .start(
            sb.daemon("a", &[])
                .socket_path(&socket)
                .healthcheck(fast_checks()),
        )
        .await;
    std::fs::remove_dir_all(sb.path("run")).unwrap();
    let second = wait_replaced(&sb, "a", first.pid).await;
    assert!(!first.alive());
    let _second = Tracked::new(second);
    ping(&socket)
        .await
        .expect("the new daemon serves in the recreated folder");
    let mode = std::fs::metadata(sb.path("run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The socket's folder replaced by a file: the restart cannot prepare the
/// socket, and tend says so and gives up; once the folder is back, a
/// start works again.
#[tokio::test]
async fn socket_directory_turned_into_a_file_fails_restarts_with_a_clear_error() {
    let sb = Sandbox::new();
    let socket = sb.path("run/a.sock");
    let first = sb
        .start(
            sb.daemon("a", &[])
                .socket_path(&socket)
                .healthcheck(fast_checks())
                .max_restart_attempts(2),
        )
        .await;
    std::fs::remove_dir_all(sb.path("run")).unwrap();
    std::fs::write(sb.path("run"), "not a folder").unwrap();
    wait_state(&sb, "a", ProcessState::Error).await;
    assert!(!first.alive());
    let reason = sb.manager.process_info("a").unwrap().last_error.unwrap();
    assert!(
        reason.contains("cannot prepare socket") && reason.contains(socket.to_str().unwrap()),
        "{reason}"
    );
    std::fs::remove_file(sb.path("run")).unwrap();
    let config = sb.daemon("a", &[]).socket_path(&socket);
    let _again = sb.start(config).await;
}

// ---- the state directory ---------------------------------------------------------

/// A state directory on a read-only file system from the start: the first
/// start fails with a clear error naming it, and nothing is spawned.
#[tokio::test]
async fn read_only_state_directory_fails_the_first_start_clearly_and_spawns_nothing() {
    let sb = Sandbox::new();
    let Some(mount) = Mount::tmpfs(&sb.state_dir(), 1024) else {
        return;
    };
    mount.make_read_only();
    let starts = sb.path("starts");
    let config = sb.daemon("a", &["--record-start", starts.to_str().unwrap()]);
    let error = sb.manager.start_process(config).await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, tend::Error::Io { .. })
            && message.contains(sb.state_dir().to_str().unwrap()),
        "{message}"
    );
    assert!(lines(&starts).is_empty(), "a daemon was spawned");
}

/// The state directory turns read-only, or fills up, mid-run: orphan
/// records can no longer be written to new files (the journal the manager
/// already holds open is another matter, see [`ReadOnlyView`]), yet
/// crashes are still restarted and stops still work.
async fn supervision_goes_on_when_the_state_directory_breaks<B>(
    break_it: impl FnOnce(&Mount, &Path) -> B,
) {
    let sb = Sandbox::new();
    let Some(mount) = Mount::tmpfs(&sb.state_dir(), 256) else {
        return;
    };
    let first = sb.start(sb.daemon("a", &[])).await;
    // Declared after `mount`, so whatever it mounted is gone first.
    let _broken = break_it(&mount, &sb.state_dir());
    first.signal(Signal::KILL);
    let second = Tracked::new(wait_replaced(&sb, "a", first.pid).await);
    let other = sb.start(sb.daemon("b", &[])).await;
    sb.manager.stop_all_processes().await;
    assert!(!second.alive() && !other.alive());
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
    assert_eq!(sb.manager.state("b").ok(), Some(ProcessState::Stopped));
}

/// A read-only bind mount of a folder over itself, unmounted on drop.
///
/// Remounting the state directory's file system read-only is refused
/// (EBUSY) while a file on it is open for writing, and from its first
/// start a manager keeps its orphan journal open. A read-only view over
/// the folder is the nearest thing: every file opened from then on is
/// read-only, while the journal descriptor opened before still writes.
struct ReadOnlyView {
    path: CString,
}

impl ReadOnlyView {
    fn new(path: &Path) -> Self {
        let path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temp path");
        // SAFETY: `path` is a valid NUL-terminated string for both calls;
        // a bind mount takes no file system type or data, and its remount
        // no source.
        let (bind, read_only) = unsafe {
            let bind = libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            );
            let read_only = libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            );
            (bind, read_only)
        };
        let view = ReadOnlyView { path };
        assert_eq!(bind, 0, "bind mount: {}", std::io::Error::last_os_error());
        assert_eq!(
            read_only,
            0,
            "read-only bind remount: {}",
            std::io::Error::last_os_error()
        );
        view
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        // SAFETY: `path` is a valid NUL-terminated path.
        unsafe {
            libc::umount2(self.path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

#[tokio::test]
async fn supervision_goes_on_when_the_state_directory_turns_read_only() {
    supervision_goes_on_when_the_state_directory_breaks(|_, dir| ReadOnlyView::new(dir)).await;
}

#[tokio::test]
async fn supervision_goes_on_when_the_state_directory_is_full() {
    supervision_goes_on_when_the_state_directory_breaks(|mount, _| mount.fill()).await;
}

/// A log file on a full disk is skipped; the lines stay in memory and the
/// daemon is supervised as usual.
#[tokio::test]
async fn log_file_on_a_full_disk_is_skipped_and_lines_stay_in_memory() {
    let sb = Sandbox::new();
    let Some(mount) = Mount::tmpfs(&sb.path("full"), 64) else {
        return;
    };
    mount.fill();
    let config = sb
        .daemon("a", &["--stdout", "kept in memory"])
        .log_file(sb.path("full/a.log"));
    let _daemon = sb.start(config).await;
    sb.wait_for_stdout("a", "kept in memory").await;
    assert!(sb.manager.is_running("a"));
    ping(&sb.socket("a")).await.expect("the daemon serves");
}
