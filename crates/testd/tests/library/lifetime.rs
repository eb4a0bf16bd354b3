//! Daemons live exactly as long as their manager: they die with a manager
//! killed hard, a survivor is cleaned by the next manager, and they do not
//! die with the thread that happened to start them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::process::Child;

use crate::harness::*;

/// An app embedding tend (`tend-embedder`), killed on drop.
struct Embedder {
    child: Child,
    /// Its daemons by name, tracked.
    daemons: Vec<(String, Tracked)>,
}

impl Embedder {
    /// Runs the embedder on `sb`'s state directory with the daemon `specs`
    /// and waits until it reports them all started.
    async fn start(sb: &Sandbox, specs: &[&str]) -> Self {
        Self::start_with(sb, specs, &[]).await
    }

    /// [`Self::start`] with extra environment variables for the embedder.
    async fn start_with(sb: &Sandbox, specs: &[&str], env: &[(&str, &str)]) -> Self {
        let (child, daemons) = run_embedder(&sb.state_dir(), sb.dir.path(), specs, env).await;
        let daemons = daemons
            .into_iter()
            .map(|(name, pid)| (name, Tracked::new(pid)))
            .collect();
        Embedder { child, daemons }
    }

    /// [`Self::start`] without a guard process (`TEND_GUARD=0`): what the
    /// killed app leaves is for the next manager's cleanup.
    async fn start_unguarded(sb: &Sandbox, specs: &[&str]) -> Self {
        Self::start_with(sb, specs, &[(tend::GUARD_ENV, "0")]).await
    }

    fn daemon(&self, name: &str) -> &Tracked {
        &self.daemons.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// SIGKILLs the embedder: no destructor of it runs.
    async fn kill(&mut self) {
        self.child.kill().await.expect("kill tend-embedder");
    }
}

/// The `N` children daemon `leader` forked into its group, once they are
/// all there, tracked.
async fn forked_children<const N: usize>(leader: u32) -> [Tracked; N] {
    let mut members = Vec::new();
    wait_for(
        &format!("{N} children of {leader} to be forked"),
        SOON,
        || {
            members = group_members(leader);
            members.len() == N + 1
        },
    )
    .await;
    let children: Vec<Tracked> = members
        .into_iter()
        .filter(|&p| p != leader)
        .map(Tracked::new)
        .collect();
    children.try_into().expect("N children")
}

#[tokio::test]
async fn daemons_die_with_a_manager_killed_by_sigkill() {
    let sb = Sandbox::new();
    let mut app = Embedder::start(&sb, &["a", "b"]).await;
    assert!(app.daemons.iter().all(|(_, d)| d.alive()));
    app.kill().await;
    for (name, daemon) in &app.daemons {
        daemon
            .wait_dead(&format!("daemon {name} of a killed manager"))
            .await;
    }
}

#[tokio::test]
async fn children_left_by_a_killed_manager_are_stopped_by_the_next_managers_cleanup() {
    let sb = Sandbox::new();
    let mut app = Embedder::start_unguarded(&sb, &["a --fork-children 1"]).await;
    let [child] = forked_children(app.daemon("a").pid).await;
    app.kill().await;
    // The parent-death signal reaches the daemon only; its child lives on
    // in the group the dead manager recorded.
    app.daemon("a")
        .wait_dead("the daemon of a killed manager")
        .await;
    assert!(child.alive());
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["a"]);
    assert!(!child.alive(), "the daemon's child survived the cleanup");
}

#[tokio::test]
async fn daemon_that_survives_a_killed_manager_is_stopped_by_the_next_managers_cleanup() {
    let sb = Sandbox::new();
    let mut app = Embedder::start_unguarded(&sb, &["meek", "stubborn --ignore-sigterm"]).await;
    app.kill().await;
    // Once meek died of its parent-death signal, stubborn got (and ignored)
    // the same signal.
    app.daemon("meek").wait_dead("meek").await;
    let stubborn = app.daemon("stubborn");
    assert!(
        stubborn.alive(),
        "stubborn should ignore its parent-death SIGTERM"
    );
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["stubborn"]);
    assert_eq!(report.stale, ["meek"]);
    assert!(!stubborn.alive(), "cleanup returned before stubborn died");
    assert!(
        !sb.socket("stubborn").exists(),
        "its socket was left behind"
    );
}

/// The guard of a killed app stops at once what the parent-death signal
/// cannot: a daemon that ignores SIGTERM (SIGKILL after its 500 ms grace)
/// and the children of a daemon.
#[tokio::test]
async fn the_guard_of_a_killed_manager_stops_survivors_within_their_grace() {
    let sb = Sandbox::new();
    let mut app = Embedder::start(
        &sb,
        &[
            "a --fork-children 1 --children-ignore-sigterm",
            "stubborn --ignore-sigterm",
        ],
    )
    .await;
    let [child] = forked_children(app.daemon("a").pid).await;
    app.kill().await;
    let killed_at = std::time::Instant::now();
    // 500 ms of grace, then SIGKILL; two seconds of slack for a loaded
    // machine (a later start, the only cleanup before the guard, never
    // comes in this test).
    wait_for(
        "the killed app's survivors to die",
        Duration::from_millis(2500),
        || !child.alive() && !app.daemon("stubborn").alive() && !app.daemon("a").alive(),
    )
    .await;
    eprintln!(
        "survivors of a killed app stopped in {:?}",
        killed_at.elapsed()
    );
}

/// The signal each daemon of `app` recorded (`--record-signal` to
/// `<name>.signal` in `sb`), once it died.
async fn recorded_signals(sb: &Sandbox, app: &Embedder, names: &[&str]) -> Vec<String> {
    let mut recorded = Vec::new();
    for name in names {
        app.daemon(name)
            .wait_dead(&format!("daemon {name} of a killed app"))
            .await;
        recorded
            .push(std::fs::read_to_string(sb.path(&format!("{name}.signal"))).unwrap_or_default());
    }
    recorded
}

/// The daemon spec `name@signal`, recording the signal that stops it and
/// without a parent-death signal, as a daemon that changed its uid: only
/// the guard or a cleanup reaches it once its manager is dead.
fn recording_spec(sb: &Sandbox, name: &str, signal: &str) -> String {
    let record = sb.path(&format!("{name}.signal"));
    format!(
        "{name}@{signal} --no-parent-death-signal --record-signal {}",
        record.display()
    )
}

/// The guard of a killed app sends each daemon its own stop signal, not
/// SIGTERM: daemons with different signals in one app, none of which has
/// its parent-death signal left (so nothing but the guard signals them).
#[tokio::test]
async fn the_guard_of_a_killed_manager_sends_each_daemon_its_stop_signal() {
    let sb = Sandbox::new();
    let specs = [
        recording_spec(&sb, "quit", "SIGQUIT"),
        recording_spec(&sb, "int", "SIGINT"),
        recording_spec(&sb, "term", "SIGTERM"),
    ];
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut app = Embedder::start(&sb, &specs).await;
    app.kill().await;
    assert_eq!(
        recorded_signals(&sb, &app, &["quit", "int", "term"]).await,
        ["SIGQUIT\n", "SIGINT\n", "SIGTERM\n"]
    );
}

/// A daemon stopped and started again before its app is killed still gets
/// its stop signal from the guard: the stop's "group gone" reaches the
/// guard before the new start's description of the same group or cgroup
/// (a cgroup that was not killed is used again, with the same inode).
#[tokio::test]
async fn the_guard_sends_its_stop_signal_to_a_daemon_restarted_before_the_kill() {
    let sb = Sandbox::new();
    let spec = recording_spec(&sb, "quit", "SIGQUIT");
    let mut app = Embedder::start_with(&sb, &[&spec], &[("TEND_EMBEDDER_RESTART", "quit")]).await;
    app.kill().await;
    // One line from the restart's stop, one from the guard.
    assert_eq!(
        recorded_signals(&sb, &app, &["quit"]).await,
        ["SIGQUIT\nSIGQUIT\n"]
    );
}

/// The parent-death signal armed in a daemon is its stop signal: with no
/// guard, a daemon configured with SIGQUIT gets SIGQUIT from the kernel
/// when its app is killed.
#[tokio::test]
async fn the_parent_death_signal_is_the_daemons_stop_signal() {
    let sb = Sandbox::new();
    let record = sb.path("quit.signal");
    let spec = format!("quit@SIGQUIT --record-signal {}", record.display());
    let mut app = Embedder::start_unguarded(&sb, &[&spec]).await;
    app.kill().await;
    assert_eq!(recorded_signals(&sb, &app, &["quit"]).await, ["SIGQUIT\n"]);
}

/// A survivor of a killed app without a guard (its parent-death signal
/// gone) gets its own stop signal from the next manager's cleanup, first,
/// before any SIGKILL: from the dead manager's cgroup cleanup with cgroup
/// containment, from the journal record's with process groups.
#[tokio::test]
async fn the_next_managers_cleanup_sends_a_survivor_its_stop_signal() {
    let sb = Sandbox::new();
    let specs = [
        recording_spec(&sb, "quit", "SIGQUIT"),
        recording_spec(&sb, "term", "SIGTERM"),
    ];
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut app = Embedder::start_unguarded(&sb, &specs).await;
    app.kill().await;
    // `kill` waited for the app to die; nothing else signals its daemons.
    assert!(app.daemon("quit").alive() && app.daemon("term").alive());
    let mut report = sb.manager.cleanup_orphans().await.unwrap();
    report.killed.sort();
    assert_eq!(report.killed, ["quit", "term"], "{report:?}");
    assert_eq!(
        recorded_signals(&sb, &app, &["quit", "term"]).await,
        ["SIGQUIT\n", "SIGTERM\n"]
    );
}

/// A daemon that changed its uid has lost its parent-death signal (the
/// kernel clears it), as `memcached -u nobody` does: the guard still
/// stops it when the app is killed.
#[tokio::test]
async fn a_daemon_that_changed_its_uid_dies_with_its_killed_manager() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: changing a daemon's uid needs root");
        return;
    }
    let sb = Sandbox::new();
    let mut app = Embedder::start(&sb, &["memcached --drop-to-uid 65534"]).await;
    let daemon = Tracked::new(app.daemon("memcached").pid);
    wait_for("the daemon to drop to uid 65534", SOON, || {
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid)).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534"))
        })
    })
    .await;
    app.kill().await;
    daemon
        .wait_dead("a daemon that changed its uid, of a killed app")
        .await;
}

/// nginx, redis and PostgreSQL overwrite their environment when they set
/// their process title, so the manager's marker is gone from their
/// workers. When the app and the leader die together, the workers live
/// on in the leader's old group; with cgroup containment the guard stops
/// them all the same. (Process groups cannot prove such workers are
/// ours once their leader is gone: the known limit of that mode.)
#[tokio::test]
async fn workers_that_rewrote_their_environment_die_with_a_killed_manager() {
    if containment_here().await != tend::Containment::Cgroup {
        eprintln!("skipped: needs cgroup containment");
        return;
    }
    let sb = Sandbox::new();
    let mut app = Embedder::start(
        &sb,
        &["nginx --rewrite-environ --fork-children 2 --children-ignore-sigterm"],
    )
    .await;
    let workers: [Tracked; 2] = forked_children(app.daemon("nginx").pid).await;
    for worker in &workers {
        let environ = std::fs::read(format!("/proc/{}/environ", worker.pid)).unwrap();
        assert!(
            !environ.windows(15).any(|w| w == b"TEND_MANAGER_ID"),
            "the worker's environment still shows the marker"
        );
    }
    app.kill().await;
    for worker in &workers {
        worker
            .wait_dead("a worker with a rewritten environment")
            .await;
    }
}

#[test]
fn daemon_survives_the_exit_of_the_thread_that_started_it() {
    let retired = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&retired);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_keep_alive(Duration::from_millis(100))
        .on_thread_stop(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .enable_all()
        .build()
        .unwrap();
    let sb = Sandbox::new();
    runtime.block_on(async {
        let manager = sb.manager.clone();
        let config = sb.daemon("a", &[]);
        let handle = tokio::runtime::Handle::current();
        let pid = tokio::task::spawn_blocking(move || {
            handle.block_on(manager.start_process(config)).unwrap();
            manager.pid("a").ok().flatten().unwrap()
        })
        .await
        .unwrap();
        let daemon = Tracked::new(pid);
        wait_for("the blocking thread to retire", SOON, || {
            retired.load(Ordering::SeqCst) >= 1
        })
        .await;
        // The point of this test is time passing: had the daemon's
        // parent-death signal been tied to the retired thread, it would
        // have been sent as that thread exited; give it ample time to be
        // delivered and acted upon before looking.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            daemon.alive(),
            "the daemon died with the thread that started it"
        );
        assert!(sb.manager.is_running("a"));
    });
}

/// A runtime shut down while its daemons run drops their supervisors
/// before they could reap them; once the manager is dropped too (which
/// kills the daemons), nothing is left behind, not even a zombie.
#[test]
fn daemons_of_a_shut_down_runtime_leave_no_zombie() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sb = runtime.block_on(async { Sandbox::new() });
    let daemons: Vec<Tracked> = runtime.block_on(async {
        let mut daemons = Vec::new();
        for name in ["a", "b"] {
            daemons.push(sb.start(sb.worker(name, &[])).await);
        }
        daemons
    });
    let pids: Vec<u32> = daemons.iter().map(|d| d.pid).collect();
    drop(runtime);
    drop(sb);
    // A reaped process leaves no /proc entry; a zombie keeps one.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    waiter.block_on(wait_for("the daemons to be reaped", SOON, || {
        pids.iter().all(|&pid| proc_stat(pid).is_none())
    }));
}

/// In a container whose seccomp profile denies `close_range` and `unshare`
/// (an older profile, or Docker's default without `CAP_SYS_ADMIN`), the
/// spawner cannot unshare part of the descriptor table; it falls back to a
/// copy of it, and the daemons start and serve as usual.
#[tokio::test]
async fn daemons_start_where_seccomp_denies_unsharing_descriptors() {
    let sb = Sandbox::new();
    let mut app =
        Embedder::start_with(&sb, &["a", "b"], &[("TEND_EMBEDDER_DENY_UNSHARE", "1")]).await;
    for name in ["a", "b"] {
        assert!(app.daemon(name).alive());
        let reply = ping(&sb.socket(name)).await.expect("the daemon serves");
        assert!(reply.contains("pong"), "{reply}");
    }
    app.kill().await;
}

/// With cgroup containment a daemon starts inside its own cgroup,
/// `tend-<manager>/d-<name>` (created there by `clone3`, or joined before
/// exec where that is refused), and its children are in it too.
#[tokio::test]
async fn a_daemon_and_its_children_run_in_the_daemons_cgroup() {
    let sb = Sandbox::new();
    let daemon = sb
        .start(sb.daemon("boxed", &["--fork-children", "1"]))
        .await;
    if sb.manager.containment() != Some(tend::Containment::Cgroup) {
        eprintln!("skipped: needs cgroup containment");
        return;
    }
    let children = sb.wait_for_pids("boxed", "child ", 1).await;
    let cgroup_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .unwrap()
    };
    let own = cgroup_of(daemon.pid);
    assert!(own.ends_with("/d-boxed"), "{own}");
    let manager = own.rsplit_once('/').unwrap().0;
    assert!(
        manager.rsplit('/').next().unwrap().starts_with("tend-"),
        "{own}"
    );
    assert_eq!(cgroup_of(children[0].pid), own);
}
