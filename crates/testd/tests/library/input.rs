//! Bad configs are rejected before anything runs, naming the field at
//! fault; the limits themselves are accepted.

use std::time::Duration;

use tend::{BackgroundProcessConfig, Error, HealthCheck, ProcessState};

use crate::harness::*;

/// Asserts that starting `config` fails with `InvalidConfig` naming
/// `field`, and that the manager did not take the process on.
async fn assert_rejected(sb: &Sandbox, config: BackgroundProcessConfig, field: &str) {
    let name = config.name.clone();
    match sb.manager.start_process(config).await {
        Err(Error::InvalidConfig { problems, .. }) => {
            assert!(
                problems.iter().any(|p| p.field == field),
                "problems {problems} do not name {field}"
            );
        }
        other => panic!("expected InvalidConfig naming {field}, got {other:?}"),
    }
    assert_eq!(
        sb.manager.state(&name).ok(),
        None,
        "a rejected config was registered"
    );
    assert!(sb.manager.list().is_empty());
}

#[tokio::test]
async fn names_that_could_point_outside_the_state_dir_are_rejected() {
    let sb = Sandbox::new();
    for name in ["a/b", "..", ".", "../x", "a\0b", ""] {
        assert_rejected(&sb, sb.daemon(name, &[]), "name").await;
    }
}

#[tokio::test]
async fn name_of_65_bytes_is_rejected() {
    let sb = Sandbox::new();
    assert_rejected(&sb, sb.worker(&"n".repeat(65), &[]), "name").await;
}

#[tokio::test]
async fn name_of_64_bytes_is_accepted() {
    let sb = Sandbox::new();
    let name = "n".repeat(64);
    let _daemon = sb.start(sb.worker(&name, &[])).await;
    assert_eq!(sb.manager.state(&name).ok(), Some(ProcessState::Running));
}

#[tokio::test]
async fn relative_socket_path_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.worker("a", &[]).socket_path("a.sock");
    assert_rejected(&sb, config, "socket_path").await;
}

/// A path of exactly `len` bytes in the sandbox.
fn path_of_len(sb: &Sandbox, len: usize) -> std::path::PathBuf {
    let dir = sb.dir.path().to_str().unwrap();
    let path = format!("{dir}/{}", "s".repeat(len - dir.len() - 1));
    assert_eq!(path.len(), len);
    path.into()
}

#[tokio::test]
async fn socket_path_of_108_bytes_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.worker("a", &[]).socket_path(path_of_len(&sb, 108));
    assert_rejected(&sb, config, "socket_path").await;
}

#[tokio::test]
async fn socket_path_of_107_bytes_is_accepted_and_served() {
    let sb = Sandbox::new();
    let socket = path_of_len(&sb, 107);
    let _daemon = sb.start(sb.worker("a", &[]).socket_path(&socket)).await;
    assert!(sb.manager.is_running("a"));
    ping(&socket).await.expect("the daemon accepts on it");
}

#[tokio::test]
async fn zero_startup_timeout_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.daemon("a", &[]).startup_timeout(Duration::ZERO);
    assert_rejected(&sb, config, "startup_timeout").await;
}

#[tokio::test]
async fn healthcheck_without_socket_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.worker("a", &[]).healthcheck(HealthCheck::default());
    assert_rejected(&sb, config, "healthcheck").await;
}

#[tokio::test]
async fn missing_plugin_path_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.daemon("a", &[]).plugin_path(sb.path("no-such-dir"));
    assert_rejected(&sb, config, "plugin_path").await;
}

#[tokio::test]
async fn environment_name_with_equals_sign_is_rejected() {
    let sb = Sandbox::new();
    let config = sb.daemon("a", &[]).env("A=B", "v");
    assert_rejected(&sb, config, "env").await;
}

#[tokio::test]
async fn every_problem_is_reported_in_one_error() {
    let sb = Sandbox::new();
    let config = BackgroundProcessConfig::new("a/b", testd())
        .socket_path("rel.sock")
        .startup_timeout(Duration::ZERO)
        .env("A=B", "v");
    let Err(Error::InvalidConfig { problems, .. }) = sb.manager.start_process(config).await else {
        panic!("expected InvalidConfig");
    };
    let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
    for field in ["name", "socket_path", "startup_timeout", "env"] {
        assert!(fields.contains(&field), "{fields:?} lacks {field}");
    }
}
