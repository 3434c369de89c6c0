//! Black-box tests: the real binary against the built-in simulator on
//! loopback. One test binary, so the crate links once.

mod common;

mod anaplan;
mod cli;
mod config_errors;
mod delivery;
mod demo;
mod deploy;
mod enrich;
mod faults;
mod kafka;
mod operations;
mod secrets;
mod syslog;
