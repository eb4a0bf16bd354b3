use std::time::Duration;

use tend::ProcessState;

use crate::harness::*;

#[tokio::test]
async fn starts_stops_and_restarts_after_crash() {
    let sb = Sandbox::new();
    let m = &sb.manager;
    let mut events = m.subscribe();
    m.start_process(sb.daemon("a", &[])).await.unwrap();
    assert_eq!(m.state("a"), Some(ProcessState::Running));
    let pid = m.pid("a").unwrap();
    assert!(alive(pid));
    // crash it
    unsafe_kill(pid, 9);
    wait_for("restart", Duration::from_secs(10), || {
        m.pid("a").is_some_and(|p| p != pid) && m.is_running("a")
    })
    .await;
    assert_eq!(m.process_info("a").unwrap().restart_attempts, 1);
    let started = std::time::Instant::now();
    m.stop_process("a").await.unwrap();
    eprintln!("stop took {:?}", started.elapsed());
    assert_eq!(m.state("a"), Some(ProcessState::Stopped));
    assert!(!sb.socket("a").exists());
    let mut seen = vec![];
    while let Some(e) = events.try_recv() {
        seen.push(format!("{}->{} ({})", e.from, e.to, e.reason));
    }
    eprintln!("{seen:#?}");
}

fn unsafe_kill(pid: u32, sig: i32) {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}
