//! The Asana Audit Log API source.
//!
//! - `client`: requests and the meaning of each answer;
//! - `event`: one `AuditLogEvent` into an envelope;
//! - `stream`: the offset stream, its cursor and its recoveries.

pub mod client;
pub mod event;
mod stream;

pub(crate) use stream::rate_limit_wait;
pub use stream::{filters_hash, AsanaSource, RETENTION};
