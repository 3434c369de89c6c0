//! The SQLite state file: source cursors, the outbox, the dedup window,
//! sink progress, quarantined records and the enrichment user cache.
//!
//! Every invariant that involves durability is enforced here, in one place:
//! - [`StateDb::commit_page`] stores a page's new events and the source's new
//!   cursor in one transaction, and lets an event id in only once per source;
//! - [`StateDb::ack`] moves a sink's progress forward only;
//! - [`StateDb::trim_outbox`] deletes only rows every active sink acknowledged.
//!
//! rusqlite is blocking: async code reaches a [`StateDb`] through
//! [`SharedState`], which runs each call on tokio's blocking pool.

mod migrate;
mod outbox;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;

pub use migrate::SCHEMA_VERSION;

/// What can go wrong with the state file. None of these is retryable in the
/// loop that hit it: the caller logs and backs off, or stops.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file was written by a newer auditrelay.
    #[error("state database schema version {found} is newer than this binary supports ({known}); upgrade auditrelay or point it at another state file")]
    SchemaTooNew { found: i64, known: i64 },
    /// The file was written by an older auditrelay and not yet upgraded
    /// (read-only access never upgrades).
    #[error("state database schema version {found} is older than this binary's ({known}); start the daemon once to upgrade it")]
    SchemaTooOld { found: i64, known: i64 },
    /// A migration failed to apply.
    #[error("applying migration {name} failed: {cause}")]
    Migration {
        name: &'static str,
        cause: rusqlite::Error,
    },
    /// Another process holds the state file.
    #[error("state file {path} is in use by another auditrelay process (lock {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    /// Creating or opening the file failed.
    // The cause is in the message, not chained as a source: a chained
    // error would be printed twice by `{:#}`.
    #[error("cannot open state file {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// SQLite itself failed.
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An outbox row does not decode: the file was changed by something
    /// other than auditrelay, or is damaged.
    #[error("outbox row ending at seq {last_seq} is unreadable: {reason}")]
    UnreadableOutbox { last_seq: i64, reason: String },
    /// The blocking task running the query panicked or was cancelled.
    #[error("state database task failed: {0}")]
    Task(String),
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A source's place in its API, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceCursor {
    /// The source's own cursor (Asana: `next_page.offset`), if it has one.
    pub position: Option<String>,
    /// Hash of the filters `position` was issued for.
    pub filters_hash: String,
    /// The `start_at` (unix ms) of the current stream: sent with every
    /// request of it, and where it begins again while it holds no offset.
    pub stream_start: Option<i64>,
    /// Time (unix ms) of the newest event stored.
    pub last_event_time: Option<i64>,
    /// Id of the newest event stored.
    pub last_event_id: Option<String>,
}

impl SourceCursor {
    /// The columns every table holding a cursor has, in the order
    /// [`SourceCursor::from_row`] reads them.
    const COLUMNS: &'static str =
        "position, filters_hash, stream_start, last_event_time, last_event_id";

    /// Reads a cursor from [`SourceCursor::COLUMNS`], starting at column
    /// `first` of `row`.
    fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            position: row.get(first)?,
            filters_hash: row.get(first + 1)?,
            stream_start: row.get(first + 2)?,
            last_event_time: row.get(first + 3)?,
            last_event_id: row.get(first + 4)?,
        })
    }
}

/// One event ready for the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The source's event id, the dedup key.
    pub event_id: String,
    /// When it happened (unix ms).
    pub event_time: i64,
    /// The serialized envelope, exactly what sinks send.
    pub payload: String,
}

/// A record the source could not turn into an event.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Why, naming the record and the field.
    pub reason: String,
    /// The record as received.
    pub raw: String,
}

/// What [`StateDb::commit_page`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageOutcome {
    /// Events that entered the outbox.
    pub stored: u64,
    /// Events dropped because their id was already in the dedup window.
    pub duplicates: u64,
    /// Records quarantined.
    pub quarantined: u64,
}

/// One outbox row as a sink reads it.
#[derive(Debug, Clone)]
pub struct OutboxRecord {
    /// Position in the outbox; progress is tracked by it.
    pub seq: i64,
    /// The source that stored it.
    pub source_id: String,
    /// The source's event id.
    pub event_id: String,
    /// The serialized envelope.
    pub payload: String,
}

/// One dead letter, for `auditrelay dlq list`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub sink_id: String,
    /// Its outbox seq when it was rejected.
    pub seq: i64,
    pub source_id: String,
    pub event_id: String,
    pub reason: String,
    pub dead_at: i64,
    /// Marked to be tried again.
    pub replay: bool,
}

impl OutboxRecord {
    /// Maps a `SELECT <seq or id>, source_id, event_id, payload` row.
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: row.get(0)?,
            source_id: row.get(1)?,
            event_id: row.get(2)?,
            payload: row.get(3)?,
        })
    }
}

/// A sink's stored progress.
#[derive(Debug, Clone, Serialize)]
pub struct SinkProgress {
    pub sink_id: String,
    pub kind: String,
    pub acked_seq: i64,
    pub active: bool,
    pub updated_at: i64,
}

/// A summary for `auditrelay state show`.
#[derive(Debug, Clone, Serialize)]
pub struct StateSummary {
    pub path: PathBuf,
    pub schema_version: i64,
    pub sources: Vec<(String, String, SourceCursor)>,
    pub sinks: Vec<SinkProgress>,
    pub outbox_events: i64,
    pub outbox_oldest_seq: Option<i64>,
    pub outbox_newest_seq: Option<i64>,
    pub seen_ids: i64,
    pub quarantined: i64,
}

/// An open state file.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens (creating with mode 0600 if needed) and migrates the state file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |cause| StateError::Open {
            path: path.to_path_buf(),
            cause,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(open_err)?;
        }
        // Create the file ourselves so that it never exists with a wider
        // mode; SQLite gives its -wal and -shm files the same mode.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(open_err)?;
        drop(file);
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // Every hot statement is prepared once (`prepare_cached`); room for
        // all of them, so none is evicted and parsed again.
        conn.set_prepared_statement_cache_capacity(64);
        // WAL: a reader in another process (`state show`) never blocks the
        // daemon's writes. With WAL,
        // synchronous=NORMAL survives any process crash; after a power loss
        // the last transactions may roll back, but a cursor always rolls
        // back together with the events it covers, so nothing is lost: the
        // API is asked again.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate::migrate(&mut conn)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing state file for reading only: no file is created,
    /// no migration runs, nothing is written. For inspecting the file while
    /// a daemon (possibly another version) runs on it.
    pub fn open_read_only(path: &Path) -> Result<Self, StateError> {
        if !path.exists() {
            return Err(StateError::Open {
                path: path.to_path_buf(),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no state file (has the daemon run yet?)",
                ),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let found = migrate::applied_version(&conn)?;
        if found != SCHEMA_VERSION {
            return Err(if found > SCHEMA_VERSION {
                StateError::SchemaTooNew {
                    found,
                    known: SCHEMA_VERSION,
                }
            } else {
                StateError::SchemaTooOld {
                    found,
                    known: SCHEMA_VERSION,
                }
            });
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file this handle is open on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A source's stored cursor, if it ever stored one.
    pub fn cursor(&self, source_id: &str) -> Result<Option<SourceCursor>, StateError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM source_cursor WHERE source_id = ?1",
                    SourceCursor::COLUMNS
                ),
                [source_id],
                |row| SourceCursor::from_row(row, 0),
            )
            .optional()?)
    }

    /// Stores a cursor on its own, for moves that carry no events (a
    /// recovery restart, the first run's start point).
    pub fn set_cursor(
        &mut self,
        source_id: &str,
        kind: &str,
        cursor: &SourceCursor,
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        upsert_cursor(&tx, source_id, kind, cursor)?;
        tx.commit()?;
        Ok(())
    }

    /// Moves a source to read again from `cursor` (`state reset --to`), in
    /// one transaction: a backfill under way and what the source had read
    /// through belong to the old position and go.
    pub fn reset_cursor(
        &mut self,
        source_id: &str,
        kind: &str,
        cursor: &SourceCursor,
    ) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        upsert_cursor(&tx, source_id, kind, cursor)?;
        forget_progress(&tx, source_id)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets a source's cursor; its next run starts as a first run.
    pub fn delete_cursor(&mut self, source_id: &str) -> Result<bool, StateError> {
        let tx = self.conn.transaction()?;
        let existed = tx.execute(
            "DELETE FROM source_cursor WHERE source_id = ?1",
            [source_id],
        )? > 0;
        forget_progress(&tx, source_id)?;
        tx.commit()?;
        Ok(existed)
    }

    /// Empties a source's dedup window, so that a replay after
    /// `state reset` delivers events again.
    pub fn forget_seen(&mut self, source_id: &str) -> Result<u64, StateError> {
        Ok(self
            .conn
            .execute("DELETE FROM seen WHERE source_id = ?1", [source_id])? as u64)
    }

    /// Stores one page: its events that are not in the dedup window enter
    /// the outbox, its bad records go to quarantine, and the source's cursor
    /// moves to `cursor`, all in one transaction. A crash at any point leaves
    /// either all of it or none of it.
    pub fn commit_page(
        &mut self,
        source_id: &str,
        kind: &str,
        events: &[NewEvent],
        quarantined: &[Quarantined],
        cursor: &SourceCursor,
    ) -> Result<PageOutcome, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = store_page(&tx, source_id, events, quarantined)?;
        upsert_cursor(&tx, source_id, kind, cursor)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Drops dedup entries of `source_id` older than `window`, both by event
    /// time (relative to the newest stored event) and by insert time, so the
    /// window survives a long outage and holds late events long enough.
    pub fn prune_seen(&mut self, source_id: &str, window: Duration) -> Result<u64, StateError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let newest: Option<i64> = self.conn.query_row(
            "SELECT MAX(event_time) FROM seen WHERE source_id = ?1",
            [source_id],
            |row| row.get(0),
        )?;
        let Some(newest) = newest else { return Ok(0) };
        let removed = self.conn.execute(
            "DELETE FROM seen WHERE source_id = ?1 AND event_time < ?2 AND seen_at < ?3",
            params![
                source_id,
                newest.saturating_sub(window_ms),
                unix_ms_now().saturating_sub(window_ms)
            ],
        )?;
        Ok(removed as u64)
    }

    /// Drops the oldest quarantined records beyond `keep`. Returns how many.
    pub fn prune_quarantine(&mut self, keep: u64) -> Result<u64, StateError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let removed = self.conn.execute(
            // Ids have gaps (an ignored duplicate still uses one up), so
            // keep by rank, not by arithmetic on ids.
            "DELETE FROM quarantine WHERE id NOT IN
                 (SELECT id FROM quarantine ORDER BY id DESC LIMIT ?1)",
            [keep],
        )?;
        Ok(removed as u64)
    }

    /// Events in the outbox that some active sink has not acknowledged
    /// (seqs are contiguous, so two ends and the least progress bound it).
    /// Two index lookups whatever the depth (see [`outbox::DEPTH`]).
    pub fn outbox_depth(&self) -> Result<i64, StateError> {
        Ok(self
            .conn
            .prepare_cached(outbox::DEPTH)?
            .query_row([], |row| row.get(0))?)
    }

    /// Marks the configured sinks active (registering new ones at the oldest
    /// row still in the outbox) and every other sink inactive. Returns the
    /// sinks that come back after the outbox was trimmed past them, with
    /// how many events they missed while they were not configured.
    pub fn register_sinks(
        &mut self,
        sinks: &[(String, &'static str)],
    ) -> Result<Vec<(String, i64)>, StateError> {
        let now = unix_ms_now();
        let tx = self.conn.transaction()?;
        // Just before the oldest event still here (or after the last one
        // given out): where a sink with nothing missed stands at least.
        let floor = match outbox::ends(&tx)? {
            (Some(oldest), _) => oldest - 1,
            (None, _) => outbox::last_seq_given(&tx)?,
        };
        let mut missed = Vec::new();
        for (id, _) in sinks {
            let stale: Option<i64> = tx
                .query_row(
                    "SELECT acked_seq FROM sink_progress WHERE sink_id = ?1 AND active = 0",
                    [id],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(acked) = stale.filter(|acked| *acked < floor) {
                missed.push((id.clone(), floor - acked));
            }
        }
        tx.execute("UPDATE sink_progress SET active = 0", [])?;
        for (id, kind) in sinks {
            tx.execute(
                "INSERT INTO sink_progress (sink_id, kind, acked_seq, active, updated_at)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (sink_id) DO UPDATE SET active = 1, kind = excluded.kind",
                params![id, kind, floor, now],
            )?;
        }
        tx.commit()?;
        Ok(missed)
    }

    /// The highest outbox seq `sink_id` acknowledged.
    pub fn acked_seq(&self, sink_id: &str) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT acked_seq FROM sink_progress WHERE sink_id = ?1",
                [sink_id],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Up to `limit` outbox events after seq `after`, in order.
    pub fn read_outbox(&self, after: i64, limit: usize) -> Result<Vec<OutboxRecord>, StateError> {
        outbox::read(&self.conn, after, limit)
    }

    /// Acknowledges a batch of which `rejected` were refused for good: they
    /// move to the dead-letter table with their reasons, and the sink's
    /// progress moves to `last`, in one transaction.
    pub fn ack_with_dead_letters(
        &mut self,
        sink_id: &str,
        last: i64,
        rejected: &[(OutboxRecord, String)],
    ) -> Result<(), StateError> {
        let now = unix_ms_now();
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO dead_letter (sink_id, seq, source_id, event_id, payload, reason, dead_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (record, reason) in rejected {
                insert.execute(params![
                    sink_id,
                    record.seq,
                    record.source_id,
                    record.event_id,
                    record.payload,
                    reason,
                    now
                ])?;
            }
        }
        tx.execute(
            "UPDATE sink_progress SET acked_seq = ?2, updated_at = ?3
             WHERE sink_id = ?1 AND acked_seq < ?2",
            params![sink_id, last, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Dead letters of `sink_id` marked for replay, oldest first. Their
    /// `seq` field holds the dead-letter id.
    pub fn replay_batch(
        &self,
        sink_id: &str,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, source_id, event_id, payload FROM dead_letter
             WHERE sink_id = ?1 AND replay = 1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![sink_id, limit as i64], OutboxRecord::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Settles a replayed batch: delivered rows leave the table; rejected
    /// ones stay, unmarked, with their new reason.
    pub fn settle_replay(
        &mut self,
        delivered: &[i64],
        rejected: &[(i64, String)],
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        for id in delivered {
            tx.execute("DELETE FROM dead_letter WHERE id = ?1", [id])?;
        }
        for (id, reason) in rejected {
            tx.execute(
                "UPDATE dead_letter SET replay = 0, reason = ?2, dead_at = ?3 WHERE id = ?1",
                params![id, reason, unix_ms_now()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Dead letters, optionally of one sink, oldest first.
    pub fn dead_letters(&self, sink_id: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, sink_id, seq, source_id, event_id, reason, dead_at, replay FROM dead_letter
             WHERE ?1 IS NULL OR sink_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([sink_id], |row| {
            Ok(DeadLetter {
                id: row.get(0)?,
                sink_id: row.get(1)?,
                seq: row.get(2)?,
                source_id: row.get(3)?,
                event_id: row.get(4)?,
                reason: row.get(5)?,
                dead_at: row.get(6)?,
                replay: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks dead letters for replay (all of `sink_id`, or those `ids`).
    /// Returns how many.
    pub fn mark_replay(&mut self, sink_id: Option<&str>, ids: &[i64]) -> Result<u64, StateError> {
        self.update_dead_letters("UPDATE dead_letter SET replay = 1", sink_id, ids)
    }

    /// Deletes dead letters (all of `sink_id`, or those `ids`). Returns how
    /// many.
    pub fn purge_dead_letters(
        &mut self,
        sink_id: Option<&str>,
        ids: &[i64],
    ) -> Result<u64, StateError> {
        self.update_dead_letters("DELETE FROM dead_letter", sink_id, ids)
    }

    fn update_dead_letters(
        &mut self,
        statement: &str,
        sink_id: Option<&str>,
        ids: &[i64],
    ) -> Result<u64, StateError> {
        let tx = self.conn.transaction()?;
        let mut changed = 0;
        if ids.is_empty() {
            changed += tx.execute(
                &format!("{statement} WHERE ?1 IS NULL OR sink_id = ?1"),
                [sink_id],
            )?;
        } else {
            for id in ids {
                changed += tx.execute(
                    &format!("{statement} WHERE id = ?1 AND (?2 IS NULL OR sink_id = ?2)"),
                    params![id, sink_id],
                )?;
            }
        }
        tx.commit()?;
        Ok(changed as u64)
    }

    /// Records that `sink_id` acknowledged every event up to `seq`. Progress
    /// never moves backwards.
    pub fn ack(&mut self, sink_id: &str, seq: i64) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "UPDATE sink_progress SET acked_seq = ?2, updated_at = ?3
                 WHERE sink_id = ?1 AND acked_seq < ?2",
            )?
            .execute(params![sink_id, seq, unix_ms_now()])?;
        Ok(())
    }

    /// Deletes the outbox rows whose every event all active sinks
    /// acknowledged (a row holds up to [`outbox::ROW_EVENTS`] consecutive
    /// events). Returns how many events left.
    pub fn trim_outbox(&mut self) -> Result<u64, StateError> {
        outbox::trim(&self.conn)
    }

    /// Every stored cursor, as (source id, kind, cursor).
    pub fn cursors(&self) -> Result<Vec<(String, String, SourceCursor)>, StateError> {
        let mut sources = Vec::new();
        {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT source_id, kind, {} FROM source_cursor ORDER BY source_id",
                SourceCursor::COLUMNS
            ))?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    SourceCursor::from_row(row, 2)?,
                ))
            })?;
            for row in rows {
                sources.push(row?);
            }
        }
        Ok(sources)
    }

    /// Every sink's progress, active or not.
    pub fn sink_progress(&self) -> Result<Vec<SinkProgress>, StateError> {
        let mut sinks = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT sink_id, kind, acked_seq, active, updated_at FROM sink_progress ORDER BY sink_id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(SinkProgress {
                    sink_id: row.get(0)?,
                    kind: row.get(1)?,
                    acked_seq: row.get(2)?,
                    active: row.get(3)?,
                    updated_at: row.get(4)?,
                })
            })?;
            for row in rows {
                sinks.push(row?);
            }
        }
        Ok(sinks)
    }

    /// Everything `auditrelay state show` prints.
    pub fn summary(&self) -> Result<StateSummary, StateError> {
        let sources = self.cursors()?;
        let sinks = self.sink_progress()?;
        let (oldest, newest) = outbox::ends(&self.conn)?;
        let count = |sql: &str| -> Result<i64, StateError> {
            Ok(self.conn.query_row(sql, [], |row| row.get(0))?)
        };
        Ok(StateSummary {
            path: self.path.clone(),
            schema_version: SCHEMA_VERSION,
            sources,
            sinks,
            outbox_events: self.outbox_depth()?,
            outbox_oldest_seq: oldest,
            outbox_newest_seq: newest,
            seen_ids: count("SELECT COUNT(*) FROM seen")?,
            quarantined: count("SELECT COUNT(*) FROM quarantine")?,
        })
    }
}

/// The events part of a page commit, inside the caller's transaction: the
/// events not in the dedup window enter the outbox, bad records go to
/// quarantine.
pub(super) fn store_page(
    tx: &rusqlite::Transaction<'_>,
    source_id: &str,
    events: &[NewEvent],
    quarantined: &[Quarantined],
) -> Result<PageOutcome, StateError> {
    let now = unix_ms_now();
    let mut outcome = PageOutcome::default();
    {
        let mut seen = tx.prepare_cached(
            "INSERT OR IGNORE INTO seen (source_id, event_id, event_time, seen_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            if seen.execute(params![source_id, event.event_id, event.event_time, now])? == 1 {
                fresh.push(event);
            }
        }
        outcome.stored = fresh.len() as u64;
        outcome.duplicates = (events.len() - fresh.len()) as u64;
        outbox::append(tx, source_id, now, fresh)?;
        let mut quarantine = tx.prepare_cached(
            "INSERT OR IGNORE INTO quarantine (source_id, reason, raw, raw_hash, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for record in quarantined {
            let hash = hex_sha256(record.raw.as_bytes());
            outcome.quarantined +=
                quarantine.execute(params![source_id, record.reason, record.raw, hash, now])?
                    as u64;
        }
    }
    Ok(outcome)
}

/// What a source had read belongs to its old position once the cursor is
/// reset: a backfill under way goes, and so does the point it read through
/// (it reads again from its new start, and its cursor age must say so).
fn forget_progress(tx: &rusqlite::Transaction<'_>, source_id: &str) -> Result<(), StateError> {
    tx.execute(
        "DELETE FROM backfill_slice WHERE source_id = ?1",
        [source_id],
    )?;
    tx.execute(
        "UPDATE component_health SET caught_up_at = NULL WHERE role = 'source' AND id = ?1",
        [source_id],
    )?;
    Ok(())
}

pub(super) fn upsert_cursor(
    tx: &rusqlite::Transaction<'_>,
    source_id: &str,
    kind: &str,
    cursor: &SourceCursor,
) -> Result<(), StateError> {
    tx.prepare_cached(
        "INSERT INTO source_cursor
             (source_id, kind, position, filters_hash, stream_start, last_event_time, last_event_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (source_id) DO UPDATE SET
             kind = excluded.kind, position = excluded.position,
             filters_hash = excluded.filters_hash, stream_start = excluded.stream_start,
             last_event_time = excluded.last_event_time, last_event_id = excluded.last_event_id,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
            source_id,
            kind,
            cursor.position,
            cursor.filters_hash,
            cursor.stream_start,
            cursor.last_event_time,
            cursor.last_event_id,
            unix_ms_now()
        ],
    )?;
    Ok(())
}

/// An exclusive lock on a state file, held for the life of the process that
/// writes it, so two daemons (or a daemon and `state reset`) never share one.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock next to `state_path`, failing at once if it is held.
    pub fn acquire(state_path: &Path) -> Result<Self, StateError> {
        let mut lock_path = state_path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|cause| StateError::Open {
                    path: dir.to_path_buf(),
                    cause,
                })?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|cause| StateError::Open {
                path: lock_path.clone(),
                cause,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                path: state_path.to_path_buf(),
                lock: lock_path,
            }),
            Err(std::fs::TryLockError::Error(cause)) => Err(StateError::Open {
                path: lock_path,
                cause,
            }),
        }
    }
}

impl StateLock {
    /// Whether a process holds the lock next to `state_path`. Creates
    /// nothing and never blocks a starting daemon: a missing lock file
    /// means none runs; otherwise a shared lock is tried and released.
    pub fn is_held(state_path: &Path) -> bool {
        let mut lock_path = state_path.as_os_str().to_owned();
        lock_path.push(".lock");
        let Ok(file) = File::open(PathBuf::from(lock_path)) else {
            return false;
        };
        matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    }
}

/// A [`StateDb`] usable from async code: each call runs on the blocking pool
/// so SQLite never stalls the runtime.
#[derive(Debug, Clone)]
pub struct SharedState {
    db: Arc<Mutex<StateDb>>,
    /// One call at a time goes to the blocking pool; the others wait here,
    /// as tasks, in arrival order. Waiting on `db`'s lock instead would
    /// park one pool thread per waiting caller, and every such thread
    /// grows the process's memory (an allocator arena of its own).
    turn: Arc<tokio::sync::Semaphore>,
    /// The outbox depth as of the latest page commit or depth query
    /// through this handle (or its clones); `i64::MAX` before the first.
    /// Only sinks (acknowledging) lower the depth between two of those, so it is
    /// never below the depth, apart from commits in flight.
    depth_hint: Arc<AtomicI64>,
}

impl SharedState {
    /// Opens `path` (see [`StateDb::open`]).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Ok(Self::new(StateDb::open(path)?))
    }

    /// Wraps an open database.
    pub fn new(db: StateDb) -> Self {
        Self {
            db: Arc::new(Mutex::new(db)),
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            depth_hint: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }

    /// The outbox depth as of the latest page commit or
    /// [`SharedState::outbox_depth`] call (`i64::MAX` before the first): at
    /// least the depth now, less only by commits still in flight. Costs no
    /// call to the database.
    pub fn outbox_depth_hint(&self) -> i64 {
        self.depth_hint.load(Ordering::Relaxed)
    }

    /// Records a depth just read in the database.
    fn observed_depth(&self, depth: i64) {
        self.depth_hint.store(depth, Ordering::Relaxed);
    }

    /// The outbox depth, read in the database.
    pub async fn outbox_depth(&self) -> Result<i64, StateError> {
        let depth = self.call(|db| db.outbox_depth()).await?;
        self.observed_depth(depth);
        Ok(depth)
    }

    /// [`StateDb::commit_page`] on the blocking pool; also notes the outbox
    /// depth after the commit (see [`SharedState::outbox_depth_hint`]).
    pub async fn commit_page(
        &self,
        source_id: String,
        kind: &'static str,
        events: Vec<NewEvent>,
        quarantined: Vec<Quarantined>,
        cursor: SourceCursor,
    ) -> Result<PageOutcome, StateError> {
        self.committing(move |db| db.commit_page(&source_id, kind, &events, &quarantined, &cursor))
            .await
    }

    /// [`StateDb::commit_slice_page`] on the blocking pool; also notes the
    /// outbox depth after the commit.
    pub async fn commit_slice_page(
        &self,
        source_id: String,
        events: Vec<NewEvent>,
        quarantined: Vec<Quarantined>,
        slice: SliceCursor,
        finished: bool,
    ) -> Result<PageOutcome, StateError> {
        self.committing(move |db| {
            db.commit_slice_page(&source_id, &events, &quarantined, &slice, finished)
        })
        .await
    }

    /// Runs `commit` and notes the outbox depth after it. Every commit that
    /// adds to the outbox goes through here, so the noted depth is never
    /// below the real one (apart from commits in flight).
    async fn committing<F>(&self, commit: F) -> Result<PageOutcome, StateError>
    where
        F: FnOnce(&mut StateDb) -> Result<PageOutcome, StateError> + Send + 'static,
    {
        let (outcome, depth) = self
            .call(move |db| {
                let outcome = commit(db)?;
                Ok((outcome, db.outbox_depth()?))
            })
            .await?;
        self.observed_depth(depth);
        Ok(outcome)
    }

    /// Runs `f` with the database on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut StateDb) -> Result<T, StateError> + Send + 'static,
    {
        let turn = Arc::clone(&self.turn)
            .acquire_owned()
            .await
            .map_err(|e| StateError::Task(e.to_string()))?;
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // Held until the call ends, even if its caller stops waiting.
            let _turn = turn;
            // A poisoned lock means a panic mid-call; SQLite rolled the open
            // transaction back, so the connection itself is still sound.
            let mut guard = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

mod backfill;
mod health;
mod users;

pub use backfill::{BackfillProgress, SliceCursor};
pub use health::{ComponentRecord, Observation, SinkBacklog, StateProbe};
pub use users::{CachedUser, CachedUserStatus};

#[cfg(test)]
mod tests;
