//! The event stream: every state change, in order, with a reason, and
//! only moves the transition table allows.

use rustix::process::Signal;
use tend::{
    ProcessEvent, ProcessState,
    ProcessState::{Error, Running, Starting, Stopped, Stopping},
    Subscription,
};

use crate::harness::*;

/// The events already delivered for `name`, checked to be legal moves
/// with a reason.
fn drain(events: &mut Subscription, name: &str) -> Vec<ProcessEvent> {
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        if event.name != name {
            continue;
        }
        assert!(
            event.from.can_change_to(event.to),
            "illegal transition in {event:?}"
        );
        assert!(!event.reason.is_empty(), "no reason in {event:?}");
        seen.push(event);
    }
    seen
}

fn moves(events: &[ProcessEvent]) -> Vec<(ProcessState, ProcessState)> {
    events.iter().map(|e| (e.from, e.to)).collect()
}

#[tokio::test]
async fn start_and_stop_are_reported_in_order() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let daemon = sb.start(sb.daemon("a", &[])).await;
    sb.manager.stop_process("a").await.unwrap();
    let seen = drain(&mut events, "a");
    assert_eq!(
        moves(&seen),
        [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Stopping),
            (Stopping, Stopped)
        ],
        "{seen:#?}"
    );
    assert_eq!(
        seen[1].pid,
        Some(daemon.pid),
        "the ready event names the pid"
    );
    assert!(seen.windows(2).all(|w| w[0].time <= w[1].time));
}

#[tokio::test]
async fn crash_and_restart_are_reported_with_the_exit() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let first = sb.start(sb.daemon("a", &[])).await;
    first.signal(Signal::KILL);
    wait_for("a to run again", SOON, || {
        sb.manager.is_running("a") && sb.manager.pid("a").ok().flatten() != Some(first.pid)
    })
    .await;
    let seen = drain(&mut events, "a");
    assert_eq!(
        moves(&seen),
        [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Starting),
            (Starting, Running)
        ],
        "{seen:#?}"
    );
    assert!(seen[2].reason.contains("signal 9"), "{:?}", seen[2].reason);
}

#[tokio::test]
async fn giving_up_is_reported_with_the_reason() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let config = sb
        .daemon("a", &["--exit-after", "300", "--exit-code", "5"])
        .max_restart_attempts(1);
    sb.manager.start_process(config).await.unwrap();
    wait_for("a to give up", SOON, || {
        sb.manager.state("a").ok() == Some(Error)
    })
    .await;
    let seen = drain(&mut events, "a");
    assert_eq!(
        moves(&seen),
        [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Starting),
            (Starting, Running),
            (Running, Error)
        ],
        "{seen:#?}"
    );
    let last = &seen[4].reason;
    assert!(
        last.contains("code 5") && last.contains("gave up after 1 restart"),
        "{last}"
    );
}

#[tokio::test]
async fn failed_first_start_is_reported_as_an_error() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    sb.manager
        .start_process(sb.daemon("a", &["--exit-immediately", "--exit-code", "3"]))
        .await
        .unwrap_err();
    let seen = drain(&mut events, "a");
    assert_eq!(
        moves(&seen),
        [(Stopped, Starting), (Starting, Error)],
        "{seen:#?}"
    );
    assert!(seen[1].reason.contains("code 3"), "{:?}", seen[1].reason);
}

/// The next item of `stream`, through `futures_core::Stream` alone.
async fn next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

#[tokio::test]
async fn a_subscription_is_a_stream_of_state_changes() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let _daemon = sb.start(sb.daemon("a", &[])).await;
    sb.manager.stop_process("a").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = within("the next event", SOON, next(&mut events))
            .await
            .expect("the manager is alive");
        seen.push(event);
    }
    assert_eq!(
        moves(&seen),
        [
            (Stopped, Starting),
            (Starting, Running),
            (Running, Stopping),
            (Stopping, Stopped)
        ]
    );
}

#[tokio::test]
async fn a_subscription_ends_when_the_manager_is_gone() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let Sandbox { manager, dir } = sb;
    drop(manager);
    assert_eq!(
        within("the end of the stream", SOON, next(&mut events)).await,
        None
    );
    drop(dir);
}

#[tokio::test]
async fn followed_logs_are_a_stream() {
    let sb = Sandbox::new();
    let _daemon = sb.start(sb.daemon("a", &["--stdout", "hello"])).await;
    sb.wait_for_stdout("a", "hello").await;
    let mut follow = sb.manager.follow_logs("a").unwrap();
    sb.manager.restart_process("a").await.unwrap();
    let _second = crate::harness::Tracked::new(sb.manager.pid("a").unwrap().unwrap());
    // First tend's marker of the new incarnation, then the daemon's line.
    let marker = within("the marker line", SOON, next(&mut follow))
        .await
        .unwrap();
    assert_eq!(marker.stream, tend::Stream::Tend, "{marker:?}");
    let line = within("a followed line", SOON, next(&mut follow))
        .await
        .unwrap();
    assert_eq!(line.text, "hello");
    assert_eq!(follow.take_missed(), 0);
}

#[tokio::test]
async fn every_query_by_name_fails_alike_for_an_unknown_name() {
    let sb = Sandbox::new();
    let unknown = |result: Result<(), tend::Error>, what: &str| match result {
        Err(tend::Error::UnknownProcess(name)) => assert_eq!(name, "ghost", "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    let m = &sb.manager;
    unknown(m.state("ghost").map(drop), "state");
    unknown(m.pid("ghost").map(drop), "pid");
    unknown(m.process_info("ghost").map(drop), "process_info");
    unknown(m.logs("ghost", 1).map(drop), "logs");
    unknown(m.follow_logs("ghost").map(drop), "follow_logs");
    unknown(m.stop_process("ghost").await, "stop_process");
    unknown(m.restart_process("ghost").await, "restart_process");
    unknown(m.rpc_client("ghost").map(drop), "rpc_client");
    unknown(m.subscribe_daemon("ghost", ["e"]), "subscribe_daemon");
    assert!(!m.is_running("ghost"));
}
