//! Integration tests of the tend library against real `testd` daemons.

mod harness;
mod smoke;
