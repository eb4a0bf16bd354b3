//! The reliability suite: tend's promises under faults, abuse and chaos,
//! proven with real processes. Each guarantee and the tests that prove it
//! are listed in `docs/RELIABILITY.md`.
//!
//! - `faults`: a manager killed with SIGKILL, escaped descendants, PID
//!   reuse, crash loops, hung daemons, floods of output, socket and state
//!   directories that vanish or fill up, two managers on one directory.
//! - `abuse`: property-based configs and inputs at their limits.
//! - `chaos`: a seeded random walk of operations checked against a model
//!   after every step (`TEND_CHAOS_SEED`, `TEND_CHAOS_SECS`).
//! - `regressions`: each failure the chaos run found, pinned by name.
//!
//! Every test works in its own short temp dir and kills whatever it
//! started, also when it fails.

#[allow(dead_code)]
#[path = "../library/harness.rs"]
mod harness;
mod support;

mod abuse;
mod chaos;
mod faults;
mod regressions;
