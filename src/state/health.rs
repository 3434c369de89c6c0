//! What the daemon reports about itself through the state file: each
//! component's last success and error (`component_health`), and the
//! backlog figures behind `auditrelay status` and the metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{unix_ms_now, SourceCursor, StateDb, StateError};

/// A source's or sink's last known health, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentRecord {
    /// `source` or `sink`.
    pub role: String,
    pub id: String,
    /// `asana`, `kafka`, ...
    pub kind: String,
    /// Unix ms of the last successful poll or acknowledged batch.
    pub last_success_at: Option<i64>,
    /// Unix ms of the last poll that reached the end of the stream: the
    /// source has read everything up to about then.
    pub caught_up_at: Option<i64>,
    pub last_error_at: Option<i64>,
    /// The error's message, with credentials removed.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    pub updated_at: i64,
}

/// One sink's backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkBacklog {
    pub sink_id: String,
    pub kind: String,
    pub active: bool,
    pub acked_seq: i64,
    /// Outbox events after its progress.
    pub events: i64,
    /// Their payload bytes.
    pub bytes: i64,
    /// Rows in the dead-letter table for it.
    pub dead_letters: i64,
}

/// Everything the metrics and `auditrelay status` read, in one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    /// (source id, kind, cursor).
    pub sources: Vec<(String, String, SourceCursor)>,
    pub sinks: Vec<SinkBacklog>,
    pub health: Vec<ComponentRecord>,
    pub outbox_events: i64,
    /// The database plus its write-ahead log, in bytes.
    pub file_bytes: u64,
    /// Backfills under way, by source id.
    pub backfills: Vec<(String, super::BackfillProgress)>,
}

impl StateDb {
    /// Stores components' health, replacing their previous rows.
    pub fn record_health(&mut self, records: &[ComponentRecord]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO component_health (role, id, kind, last_success_at, caught_up_at,
                     last_error_at, last_error, consecutive_failures, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (role, id) DO UPDATE SET kind = excluded.kind,
                     last_success_at = excluded.last_success_at,
                     caught_up_at = excluded.caught_up_at,
                     last_error_at = excluded.last_error_at,
                     last_error = excluded.last_error,
                     consecutive_failures = excluded.consecutive_failures,
                     updated_at = excluded.updated_at",
            )?;
            for r in records {
                stmt.execute(params![
                    r.role,
                    r.id,
                    r.kind,
                    r.last_success_at,
                    r.caught_up_at,
                    r.last_error_at,
                    r.last_error,
                    i64::try_from(r.consecutive_failures).unwrap_or(i64::MAX),
                    r.updated_at,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored health of every component.
    pub fn health(&self) -> Result<Vec<ComponentRecord>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT role, id, kind, last_success_at, caught_up_at, last_error_at, last_error,
                    consecutive_failures, updated_at
             FROM component_health ORDER BY role, id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(ComponentRecord {
                role: row.get(0)?,
                id: row.get(1)?,
                kind: row.get(2)?,
                last_success_at: row.get(3)?,
                caught_up_at: row.get(4)?,
                last_error_at: row.get(5)?,
                last_error: row.get(6)?,
                consecutive_failures: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
                updated_at: row.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One component's stored health.
    pub fn component_health(
        &self,
        role: &str,
        id: &str,
    ) -> Result<Option<ComponentRecord>, StateError> {
        Ok(self
            .health()?
            .into_iter()
            .find(|r| r.role == role && r.id == id))
    }

    /// Proves the database answers (for `/readyz` and the watchdog).
    pub fn ping(&self) -> Result<(), StateError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |_| Ok(()))
            .optional()?;
        Ok(())
    }

    /// Cursors, sink backlogs and health in one read.
    pub fn observe(&self) -> Result<Observation, StateError> {
        let progress = self.sink_progress()?;
        let mut sinks = Vec::with_capacity(progress.len());
        {
            let mut dead = self
                .conn
                .prepare_cached("SELECT COUNT(*) FROM dead_letter WHERE sink_id = ?1")?;
            for sink in progress {
                let (events, bytes) = super::outbox::backlog(&self.conn, sink.acked_seq)?;
                let dead_letters = dead.query_row([&sink.sink_id], |row| row.get(0))?;
                sinks.push(SinkBacklog {
                    sink_id: sink.sink_id,
                    kind: sink.kind,
                    active: sink.active,
                    acked_seq: sink.acked_seq,
                    events,
                    bytes,
                    dead_letters,
                });
            }
        }
        let file_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut path = self.path.clone().into_os_string();
                path.push(suffix);
                std::fs::metadata(path).ok().map(|m| m.len())
            })
            .sum();
        Ok(Observation {
            sources: self.cursors()?,
            sinks,
            health: self.health()?,
            outbox_events: self.outbox_depth()?,
            file_bytes,
            backfills: self.backfills()?,
        })
    }
}

impl ComponentRecord {
    /// A fresh record for a component that has not reported yet.
    pub fn new(role: &str, id: &str, kind: &str) -> Self {
        Self {
            role: role.to_string(),
            id: id.to_string(),
            kind: kind.to_string(),
            last_success_at: None,
            caught_up_at: None,
            last_error_at: None,
            last_error: None,
            consecutive_failures: 0,
            updated_at: unix_ms_now(),
        }
    }
}

/// A read-only connection of its own, to check that the state file answers
/// (for `/readyz` and the watchdog) without queueing behind the daemon's
/// writes on the shared connection.
#[derive(Debug, Clone)]
pub struct StateProbe {
    path: PathBuf,
    conn: Arc<Mutex<Option<StateDb>>>,
}

impl StateProbe {
    /// A probe of the state file at `path` (opened on first use).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            conn: Arc::default(),
        }
    }

    /// Reads from the file; an error drops the connection so the next ping
    /// opens it again.
    pub async fn ping(&self) -> Result<(), StateError> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = probe
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if conn.is_none() {
                *conn = Some(StateDb::open_read_only(&probe.path)?);
            }
            let result = conn.as_ref().map_or(Ok(()), StateDb::ping);
            if result.is_err() {
                *conn = None;
            }
            result
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }
}
