//! The Asana Audit Log API source.
//!
//! - `client`: requests and the meaning of each answer;
//! - `event`: one `AuditLogEvent` into an envelope;
//! - `stream`: the offset stream, its cursor and its recoveries;
//! - `users`: `GET /users/{gid}` for enrichment.

pub mod client;
pub mod event;
mod stream;
pub mod users;

pub use stream::{filters_hash, AsanaSource, RETENTION};
