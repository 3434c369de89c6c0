//! The Anaplan audit source (tenant-level events, audit-apis.md Part 1):
//! `auth` (basic, certificate and token logins, refresh), `client` (one
//! page of `GET /events` over a pinned window), `event` (record →
//! envelope, gap markers), `stream` (windows, overlap, drift-safe paging),
//! and `catalog` (what each `USR-*` code means).

pub mod auth;
pub mod catalog;
pub mod client;
pub mod event;
mod stream;
pub mod users;

pub use stream::{AnaplanSource, RETENTION};
