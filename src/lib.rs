//! auditrelay streams SaaS audit logs into a SIEM without losing an event.
//!
//! # Layout
//!
//! - [`cli`]: the command line; [`app`]: the daemon's tasks and stop order;
//!   [`demo`]: simulator and daemon in one process.
//! - [`config`]: TOML + environment, validated, every problem reported.
//! - [`asana`]: the Asana audit log source (client, event mapping, stream).
//! - [`anaplan`]: the Anaplan audit source (so far its event-code catalog).
//! - [`source`]: what sources share (error classes, context, counters);
//!   [`budget`]: a source's client-side rate budget; [`enrich`]: cached
//!   user lookups (name, email) for the envelope.
//! - [`state`]: the SQLite state file: cursors, outbox, dedup, progress.
//! - [`sink`]: sinks and the delivery loop (stdout, file).
//! - [`envelope`]: the JSON contract with the SIEM.
//! - [`retry`]: backoff and `Retry-After`; [`secret`]: credentials that
//!   cannot leak; [`shutdown`]: signals; [`telemetry`]: logging.
//! - [`simulator`]: the fake Asana and Anaplan APIs used by the demo, tests,
//!   benchmarks.
//!
//! See ARCHITECTURE.md for the invariants and how each is enforced.

#![forbid(unsafe_code)]

pub mod anaplan;
pub mod api;
pub mod app;
pub mod asana;
pub mod budget;
pub mod cli;
pub mod config;
pub mod demo;
pub mod enrich;
pub mod envelope;
pub mod health;
pub mod http;
pub mod metrics;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod simulator;
pub mod sink;
pub mod source;
pub mod state;
pub mod status;
pub mod systemd;
pub mod telemetry;
