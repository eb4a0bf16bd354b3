//! Regression tests for failures the chaos run found, one per failure,
//! named after what went wrong.

use tend::{BackgroundProcessManager, Error, ProcessState};

use crate::harness::*;

/// Found by `TEND_CHAOS_SEED=22` (step 2660): a `start_process` that
/// checked the shutting-down flag just before `stop_all_processes` set it,
/// and registered its slot just after stop_all took its list of names,
/// ran its daemon after stop_all had returned — unstopped, although the
/// manager refuses every start from then on.
///
/// The window is widest on a manager's first start, which creates the
/// state directory and the spawning thread between the check and the
/// registration; each round races one against stop_all on two threads.
#[test]
fn start_racing_stop_all_is_refused_or_stopped() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sb = Sandbox::new();
    runtime.block_on(async {
        let mut leaks = Vec::new();
        for round in 0..40 {
            let manager = BackgroundProcessManager::builder()
                .state_dir(sb.path(&format!("state{round}")))
                .build();
            let config = sb.worker(&format!("w{round}"), &[]);
            let name = config.name.clone();
            let start = tokio::spawn({
                let manager = manager.clone();
                async move { manager.start_process(config).await }
            });
            // Let the start task begin on the other worker.
            tokio::task::yield_now().await;
            manager.stop_all_processes().await;
            let started = within("the racing start", SOON, start).await.unwrap();
            match (&started, manager.state(&name).ok()) {
                (Err(Error::ShuttingDown(_) | Error::Stopped(_)), _) => {}
                (Ok(()), Some(ProcessState::Stopped)) => {}
                (_, state) => {
                    if let Some(pid) = manager.pid(&name).ok().flatten() {
                        leaks.push(Tracked::new(pid));
                    }
                    leaks_report(round, &started, state);
                }
            }
            // A manager dropped while a daemon runs kills it.
            drop(manager);
        }
        assert!(
            leaks.is_empty(),
            "{} daemons outlived stop_all",
            leaks.len()
        );
    });
}

fn leaks_report(round: u32, started: &Result<(), Error>, state: Option<ProcessState>) {
    eprintln!("round {round}: start gave {started:?} and left the daemon {state:?} after stop_all");
}
