//! Integration tests of the `tend` binary against real daemons: the Python
//! example daemon and `testd` (built by `cargo test --workspace`).
//!
//! Each test has its own short temp dir and state directory, so the tests
//! run in parallel; every process a test starts is killed when its
//! sandbox is dropped, also on panic (see `harness`).

mod call;
mod client_errors;
mod colour;
mod config_errors;
mod control_socket;
mod ecosystem;
mod escape;
mod failures;
mod harness;
mod health_probe;
mod identity;
mod kill9;
mod lifecycle;
mod limits;
mod lock;
mod logs;
mod names;
mod node_env;
mod notify;
mod ordering;
mod projects;
mod publish;
mod python_env;
mod readiness;
mod reliability;
mod reload;
mod signals;
mod top;
mod trust;
mod usage;
