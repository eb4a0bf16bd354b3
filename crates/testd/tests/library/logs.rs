//! Output capture: lines by stream and in order, the newest `n`, a log
//! file, and a flood that neither blocks the daemon nor grows the ring.

use std::time::Duration;

use tend::{Error, ProcessState, Stream, defaults};

use crate::harness::*;

#[tokio::test]
async fn logs_return_stdout_and_stderr_lines_by_stream() {
    let sb = Sandbox::new();
    let args = ["--stdout", "one", "--stderr", "two", "--stdout", "three"];
    let _daemon = sb.start(sb.daemon("a", &args)).await;
    // The daemon's three lines and tend's marker before them.
    wait_for("all three lines", SOON, || {
        sb.manager.logs("a", 100).unwrap().len() == 4
    })
    .await;
    assert_eq!(sb.log_texts("a", Stream::Stdout), ["one", "three"]);
    assert_eq!(sb.log_texts("a", Stream::Stderr), ["two"]);
    let marker = &sb.manager.logs("a", 100).unwrap()[0];
    assert_eq!(marker.stream, Stream::Tend);
    assert!(marker.text.starts_with("started, pid "), "{}", marker.text);
}

#[tokio::test]
async fn output_lines_are_kept_in_order() {
    let sb = Sandbox::new();
    let expected: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    let args: Vec<&str> = expected.iter().flat_map(|l| ["--stdout", l]).collect();
    let _daemon = sb.start(sb.daemon("a", &args)).await;
    sb.wait_for_stdout("a", "line 199").await;
    assert_eq!(sb.log_texts("a", Stream::Stdout), expected);
}

#[tokio::test]
async fn logs_n_returns_the_newest_n_lines() {
    let sb = Sandbox::new();
    let args: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let args: Vec<&str> = args.iter().flat_map(|l| ["--stdout", l]).collect();
    let _daemon = sb.start(sb.daemon("a", &args)).await;
    sb.wait_for_stdout("a", "9").await;
    let newest: Vec<String> = sb
        .manager
        .logs("a", 3)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(newest, ["7", "8", "9"]);
}

#[tokio::test]
async fn lines_of_earlier_incarnations_are_kept() {
    let sb = Sandbox::new();
    let _first = sb.start(sb.daemon("a", &["--stdout", "first"])).await;
    sb.wait_for_stdout("a", "first").await;
    sb.manager.stop_process("a").await.unwrap();
    let _second = sb.start(sb.daemon("a", &["--stdout", "second"])).await;
    sb.wait_for_stdout("a", "second").await;
    assert_eq!(sb.log_texts("a", Stream::Stdout), ["first", "second"]);
}

#[tokio::test]
async fn follow_logs_delivers_lines_written_later() {
    let sb = Sandbox::new();
    let _first = sb.start(sb.daemon("a", &["--stdout", "again"])).await;
    // Once the first incarnation's line is in, only the next one's can come.
    sb.wait_for_stdout("a", "again").await;
    let mut follow = sb.manager.follow_logs("a").unwrap();
    sb.manager.restart_process("a").await.unwrap();
    let second = Tracked::new(sb.manager.pid("a").ok().flatten().unwrap());
    // First tend's marker where the new incarnation begins, then its line.
    let marker = within("the marker line", SOON, follow.recv())
        .await
        .unwrap();
    assert_eq!(marker.stream, Stream::Tend);
    assert!(
        marker.text.ends_with(&format!(", pid {}", second.pid)),
        "{}",
        marker.text
    );
    let line = within("a followed line", SOON, follow.recv())
        .await
        .unwrap();
    assert_eq!(line.text, "again", "the restarted daemon prints it again");
    assert_eq!(line.stream, Stream::Stdout);
}

/// The markers of `a`'s incarnations, without their pids.
fn markers(sb: &Sandbox) -> Vec<String> {
    sb.log_texts("a", Stream::Tend)
        .into_iter()
        .map(|text| text.split(", pid ").next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_marker_says_started_after_a_start_and_restarted_after_a_restart() {
    let sb = Sandbox::new();
    let _first = sb.start(sb.daemon("a", &[])).await;
    sb.manager.restart_process("a").await.unwrap();
    let _second = Tracked::new(sb.manager.pid("a").ok().flatten().unwrap());
    // A restart with another config is a restart too.
    sb.manager
        .restart_process_with(sb.daemon("a", &["--stdout", "v2"]))
        .await
        .unwrap();
    let _third = Tracked::new(sb.manager.pid("a").ok().flatten().unwrap());
    sb.wait_for_stdout("a", "v2").await;
    sb.manager.stop_process("a").await.unwrap();
    let _fourth = sb.start(sb.daemon("a", &[])).await;
    assert_eq!(
        markers(&sb),
        ["started", "restarted", "restarted", "started"]
    );
}

#[tokio::test]
async fn restart_with_an_invalid_config_leaves_the_daemon_running() {
    let sb = Sandbox::new();
    let daemon = sb.start(sb.daemon("a", &[])).await;
    let mut invalid = sb.daemon("a", &[]);
    invalid.command = std::path::PathBuf::new();
    let error = sb.manager.restart_process_with(invalid).await.unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error:?}");
    assert_eq!(sb.manager.state("a").unwrap(), ProcessState::Running);
    assert_eq!(sb.manager.pid("a").ok().flatten(), Some(daemon.pid));
}

#[tokio::test]
async fn logs_of_an_unknown_name_are_an_error() {
    let sb = Sandbox::new();
    let error = sb.manager.logs("nobody", 10).unwrap_err();
    assert!(matches!(error, Error::UnknownProcess(_)), "{error:?}");
}

#[tokio::test]
async fn output_is_appended_to_the_log_file() {
    let sb = Sandbox::new();
    let file = sb.path("logs/a.log");
    let args = ["--stdout", "hello", "--stderr", "oh no"];
    let _daemon = sb.start(sb.daemon("a", &args).log_file(&file)).await;
    wait_for("the log file to hold both lines", SOON, || {
        let written = lines(&file);
        written.iter().any(|l| l.ends_with(" out hello"))
            && written.iter().any(|l| l.ends_with(" err oh no"))
    })
    .await;
    // Each line carries the time tend read it, and reads back as written.
    let read = tend::read_log_file(&file, 3, 10).unwrap();
    let texts: Vec<(Stream, &str)> = read.iter().map(|l| (l.stream, l.text.as_str())).collect();
    assert!(texts.contains(&(Stream::Stdout, "hello")), "{texts:?}");
    assert!(texts.contains(&(Stream::Stderr, "oh no")), "{texts:?}");
    assert_eq!(texts[0].0, Stream::Tend, "{texts:?}");
    assert!(
        read.iter()
            .all(|l| l.time > std::time::SystemTime::UNIX_EPOCH)
    );
}

#[tokio::test]
async fn flood_of_output_neither_blocks_the_daemon_nor_grows_the_ring() {
    let sb = Sandbox::new();
    // testd floods right after it is ready, then serves: an answer to a
    // ping proves its 50 MB went through the pipe without blocking it.
    let daemon = sb.start(sb.daemon("a", &["--flood", "50000000"])).await;
    let reply = within(
        "the flooding daemon to answer",
        Duration::from_secs(120),
        ping(&sb.socket("a")),
    )
    .await
    .expect("the flooding daemon accepts");
    assert!(reply.contains("pong"), "{reply}");
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Running));
    assert!(daemon.alive());
    let kept = sb.manager.logs("a", 10_000).unwrap();
    assert!(
        kept.len() <= defaults::LOG_RING_LINES,
        "{} lines kept",
        kept.len()
    );
    assert!(
        kept.iter()
            .all(|l| l.text.len() <= defaults::MAX_LOG_LINE_BYTES + 32)
    );
}
