//! Integration tests of the tend library against real `testd` daemons:
//! every test runs real processes in its own temp dir and kills whatever
//! it started, even when it fails.

mod harness;

mod crash;
mod events;
mod health;
mod identity;
mod input;
mod lifetime;
mod logs;
mod names;
mod orphans;
mod policy;
mod probes;
mod sockets;
mod start;
mod stop;
mod usage;
