//! Integration tests of the `tend` binary against real daemons: the Python
//! example daemon and `testd` (built by `cargo test --workspace`).
//!
//! Each test has its own short temp dir and state directory, so the tests
//! run in parallel; every process a test starts is killed when its
//! sandbox is dropped, also on panic (see `harness`).

mod call;
mod client_errors;
mod config_errors;
mod control_socket;
mod escape;
mod harness;
mod health_probe;
mod identity;
mod kill9;
mod lifecycle;
mod limits;
mod lock;
mod names;
mod node_env;
mod publish;
mod python_env;
mod reliability;
mod signals;
mod trust;
mod usage;
