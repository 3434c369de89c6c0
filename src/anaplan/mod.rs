//! Anaplan audit source support. For now only the event-code catalog; the source itself
//! (client, event mapping, polling) comes later.

pub mod catalog;
pub mod users;
