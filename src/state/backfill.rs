//! The slices of a backlog being read in parallel (`backfill_slice`).
//!
//! A slice is a stream over `[stream_start, end_ms)` with a cursor of its
//! own. Planning a backfill stores the slices and moves the source's own
//! cursor (the live tail) past them in one transaction, so a crash leaves
//! either the old cursor or the whole plan. The transaction that stores a
//! slice's last page deletes the slice.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{store_page, unix_ms_now, upsert_cursor, StateDb, StateError};
use super::{NewEvent, PageOutcome, Quarantined, SourceCursor};

/// One slice still being read, with its own cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceCursor {
    /// Its number within the source; slices are read in this order.
    pub slice: u32,
    /// Where it ends (unix ms, exclusive): sent as `end_at`.
    pub end_ms: i64,
    /// `stream_start` is where the slice begins (or began again after a
    /// restart by time); never `None` for a slice.
    pub cursor: SourceCursor,
}

impl SliceCursor {
    /// The point up to which this slice has read everything (unix ms).
    pub fn read_through(&self) -> i64 {
        let start = self.cursor.stream_start.unwrap_or(self.end_ms);
        self.cursor.last_event_time.map_or(start, |t| t.max(start))
    }
}

/// How far a source's backfill has come, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackfillProgress {
    /// Slices still being read.
    pub pending: u64,
    /// Everything before this (unix ms) has been read by every slice.
    pub read_through_ms: i64,
}

impl StateDb {
    /// Stores a backfill plan: the slices, and the tail's new cursor (which
    /// begins where the last slice ends), in one transaction.
    pub fn store_backfill(
        &mut self,
        source_id: &str,
        kind: &str,
        tail: &SourceCursor,
        slices: &[SliceCursor],
    ) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for slice in slices {
            upsert_slice(&tx, source_id, slice)?;
        }
        upsert_cursor(&tx, source_id, kind, tail)?;
        tx.commit()?;
        Ok(())
    }

    /// The slices of `source_id` still being read, in order.
    pub fn slices(&self, source_id: &str) -> Result<Vec<SliceCursor>, StateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT slice, end_ms, {} FROM backfill_slice WHERE source_id = ?1 ORDER BY slice",
            SourceCursor::COLUMNS
        ))?;
        let rows = stmt.query_map([source_id], |row| {
            Ok(SliceCursor {
                slice: row.get(0)?,
                end_ms: row.get(1)?,
                cursor: SourceCursor::from_row(row, 2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a slice's cursor on its own (a restart by time).
    pub fn set_slice(&mut self, source_id: &str, slice: &SliceCursor) -> Result<(), StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        upsert_slice(&tx, source_id, slice)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores one page of a slice and the slice's new cursor in one
    /// transaction, like [`StateDb::commit_page`]; when `finished`, the
    /// slice is deleted instead: it has been read to its end.
    pub fn commit_slice_page(
        &mut self,
        source_id: &str,
        events: &[NewEvent],
        quarantined: &[Quarantined],
        slice: &SliceCursor,
        finished: bool,
    ) -> Result<PageOutcome, StateError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = store_page(&tx, source_id, events, quarantined)?;
        if finished {
            tx.execute(
                "DELETE FROM backfill_slice WHERE source_id = ?1 AND slice = ?2",
                params![source_id, slice.slice],
            )?;
        } else {
            upsert_slice(&tx, source_id, slice)?;
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// Every source's backfill that is under way.
    pub fn backfills(&self) -> Result<Vec<(String, BackfillProgress)>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT source_id, COUNT(*),
                    MIN(MAX(stream_start, COALESCE(last_event_time, stream_start)))
             FROM backfill_slice GROUP BY source_id ORDER BY source_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                BackfillProgress {
                    pending: row.get(1)?,
                    read_through_ms: row.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One source's backfill, if one is under way.
    pub fn backfill(&self, source_id: &str) -> Result<Option<BackfillProgress>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT COUNT(*),
                        MIN(MAX(stream_start, COALESCE(last_event_time, stream_start)))
                 FROM backfill_slice WHERE source_id = ?1 HAVING COUNT(*) > 0",
                [source_id],
                |row| {
                    Ok(BackfillProgress {
                        pending: row.get(0)?,
                        read_through_ms: row.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}

fn upsert_slice(
    tx: &rusqlite::Transaction<'_>,
    source_id: &str,
    slice: &SliceCursor,
) -> Result<(), StateError> {
    let cursor = &slice.cursor;
    tx.execute(
        "INSERT INTO backfill_slice
             (source_id, slice, end_ms, position, filters_hash, stream_start, last_event_time, last_event_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (source_id, slice) DO UPDATE SET
             end_ms = excluded.end_ms, position = excluded.position,
             filters_hash = excluded.filters_hash, stream_start = excluded.stream_start,
             last_event_time = excluded.last_event_time, last_event_id = excluded.last_event_id,
             updated_at = excluded.updated_at",
        params![
            source_id,
            slice.slice,
            slice.end_ms,
            cursor.position,
            cursor.filters_hash,
            cursor.stream_start.unwrap_or(slice.end_ms),
            cursor.last_event_time,
            cursor.last_event_id,
            unix_ms_now()
        ],
    )?;
    Ok(())
}
