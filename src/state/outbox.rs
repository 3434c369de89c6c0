//! The outbox as stored: rows of consecutive events (see
//! `migrations/0006_outbox_rows.sql`).
//!
//! Each event has its own seq, and a row holds the events
//! `first_seq..=last_seq` of one source, so a commit pays one insert and a
//! trim one delete per row, not per event. Sinks never see rows: they read
//! events after a seq ([`read`]), and a row leaves the outbox once every
//! active sink acknowledged all of its events ([`trim`]).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{NewEvent, OutboxRecord, StateError};

/// The most events one row holds: a group commit of several pages is
/// stored as several rows, so a sink that reads part of a row reads little
/// it does not use.
pub(super) const ROW_EVENTS: usize = 128;
/// The most payload bytes one row holds (a row always holds at least one
/// event, however large).
pub(super) const ROW_BYTES: usize = 128 * 1024;

/// Appends one event to a row's `events` blob: a header line with the
/// sizes in bytes, then the event id and the payload.
fn encode(blob: &mut Vec<u8>, event_id: &str, payload: &str) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = writeln!(blob, "{} {}", event_id.len(), payload.len());
    blob.extend_from_slice(event_id.as_bytes());
    blob.extend_from_slice(payload.as_bytes());
}

/// The events of a row's blob, in order, as (event id, payload).
struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    fn new(blob: &'a [u8]) -> Self {
        Self { rest: blob }
    }

    /// The next `len` bytes, as text. (Not `take`: that is the
    /// iterator's.)
    fn text(&mut self, len: usize) -> Result<&'a str, String> {
        if self.rest.len() < len {
            return Err(format!(
                "an entry needs {len} bytes, {} are left",
                self.rest.len()
            ));
        }
        let (text, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(text).map_err(|e| format!("an entry is not UTF-8: {e}"))
    }

    fn next_entry(&mut self) -> Result<(&'a str, &'a str), String> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("an entry has no header line")?;
        let header = std::str::from_utf8(&self.rest[..end]).map_err(|_| "a header is not UTF-8")?;
        let (id_len, payload_len) = header
            .split_once(' ')
            .and_then(|(id, payload)| Some((id.parse().ok()?, payload.parse().ok()?)))
            .ok_or_else(|| format!("header {header:?} is not two sizes"))?;
        self.rest = &self.rest[end + 1..];
        Ok((self.text(id_len)?, self.text(payload_len)?))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a str, &'a str), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = self.next_entry();
        if entry.is_err() {
            // One error ends the row: nothing after it can be located.
            self.rest = &[];
        }
        Some(entry)
    }
}

fn unreadable(last_seq: i64, reason: impl Into<String>) -> StateError {
    StateError::UnreadableOutbox {
        last_seq,
        reason: reason.into(),
    }
}

/// The events of one row with their seqs, checked against the row's
/// `first_seq..=last_seq`: an entry past `last_seq` is an error before it
/// is handed out (its seq would be the next row's), and so is a row that
/// ends before `last_seq`.
struct RowEvents<'a> {
    entries: Entries<'a>,
    first_seq: i64,
    last_seq: i64,
    /// The seq of the next entry.
    seq: i64,
    done: bool,
}

impl<'a> RowEvents<'a> {
    fn new(first_seq: i64, last_seq: i64, blob: &'a [u8]) -> Self {
        Self {
            entries: Entries::new(blob),
            first_seq,
            last_seq,
            seq: first_seq,
            done: false,
        }
    }

    fn fail(&mut self, reason: String) -> Option<<Self as Iterator>::Item> {
        self.done = true;
        Some(Err(unreadable(self.last_seq, reason)))
    }
}

impl<'a> Iterator for RowEvents<'a> {
    /// (seq, event id, payload)
    type Item = Result<(i64, &'a str, &'a str), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (first, last) = (self.first_seq, self.last_seq);
        match self.entries.next() {
            Some(Err(reason)) => self.fail(reason),
            Some(Ok(_)) if self.seq > last => self.fail(format!(
                "it holds more events than its seqs {first}..={last} name"
            )),
            Some(Ok((event_id, payload))) => {
                self.seq += 1;
                Some(Ok((self.seq - 1, event_id, payload)))
            }
            None if self.seq <= last => {
                let held = self.seq - first;
                self.fail(format!(
                    "its seqs {first}..={last} name {} events, it holds {held}",
                    last - first + 1
                ))
            }
            None => None,
        }
    }
}

/// A row being filled by [`Appender::push`].
#[derive(Default)]
struct Row {
    events: usize,
    bytes: usize,
    blob: Vec<u8>,
}

/// Stores `events` after the outbox's newest event, as rows, inside the
/// caller's transaction.
pub(super) fn append<'e>(
    tx: &Transaction<'_>,
    source_id: &str,
    now: i64,
    events: impl IntoIterator<Item = &'e NewEvent>,
) -> Result<(), StateError> {
    let mut appender = Appender::new(tx, source_id, now)?;
    for event in events {
        appender.push(event)?;
    }
    appender.flush()
}

/// Fills rows and stores each once it is full ([`append`]).
struct Appender<'t, 'c> {
    tx: &'t Transaction<'c>,
    source_id: &'t str,
    now: i64,
    /// The seq of the last event stored (in this transaction or before).
    last_seq: i64,
    cum_bytes: i64,
    row: Row,
}

impl<'t, 'c> Appender<'t, 'c> {
    fn new(tx: &'t Transaction<'c>, source_id: &'t str, now: i64) -> Result<Self, StateError> {
        let last_seq = last_seq_given(tx)?;
        // cum_bytes restarts with an empty outbox: only differences between
        // rows present are used.
        let cum_bytes: i64 = tx
            .prepare_cached("SELECT cum_bytes FROM outbox ORDER BY last_seq DESC LIMIT 1")?
            .query_row([], |row| row.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(Self {
            tx,
            source_id,
            now,
            last_seq,
            cum_bytes,
            row: Row::default(),
        })
    }

    /// Adds an event after the ones pushed before it.
    fn push(&mut self, event: &NewEvent) -> Result<(), StateError> {
        if self.row.events > 0
            && (self.row.events == ROW_EVENTS || self.row.bytes + event.payload.len() > ROW_BYTES)
        {
            self.flush()?;
        }
        encode(&mut self.row.blob, &event.event_id, &event.payload);
        self.row.events += 1;
        self.row.bytes += event.payload.len();
        Ok(())
    }

    /// Stores the row being filled, if it holds any event.
    fn flush(&mut self) -> Result<(), StateError> {
        if self.row.events == 0 {
            return Ok(());
        }
        let count = i64::try_from(self.row.events).unwrap_or(i64::MAX);
        let bytes = i64::try_from(self.row.bytes).unwrap_or(i64::MAX);
        let first_seq = self.last_seq + 1;
        self.last_seq += count;
        self.cum_bytes += bytes;
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (last_seq, first_seq, source_id, enqueued_at, bytes, cum_bytes, events)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                self.last_seq,
                first_seq,
                self.source_id,
                self.now,
                bytes,
                self.cum_bytes,
                self.row.blob
            ])?;
        // The buffer is kept for the next row: a fresh one of this size
        // would be mapped and faulted in anew each time.
        self.row.events = 0;
        self.row.bytes = 0;
        self.row.blob.clear();
        Ok(())
    }
}

/// Up to `limit` events after seq `after`, in order.
pub(super) fn read(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<OutboxRecord>, StateError> {
    let mut records = Vec::with_capacity(limit.min(ROW_EVENTS * 8));
    if limit == 0 {
        return Ok(records);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT last_seq, first_seq, source_id, events FROM outbox
         WHERE last_seq > ?1 ORDER BY last_seq",
    )?;
    let mut rows = stmt.query([after])?;
    while let Some(row) = rows.next()? {
        let last_seq: i64 = row.get(0)?;
        let first_seq: i64 = row.get(1)?;
        let source_id: String = row.get(2)?;
        let blob = row
            .get_ref(3)?
            .as_blob()
            .map_err(|e| unreadable(last_seq, e.to_string()))?;
        for event in RowEvents::new(first_seq, last_seq, blob) {
            let (seq, event_id, payload) = event?;
            if seq > after {
                records.push(OutboxRecord {
                    seq,
                    source_id: source_id.clone(),
                    event_id: event_id.to_string(),
                    payload: payload.to_string(),
                });
                if records.len() == limit {
                    return Ok(records);
                }
            }
        }
    }
    Ok(records)
}

/// Deletes the rows whose every event all active sinks acknowledged.
/// Returns how many events left.
pub(super) fn trim(conn: &Connection) -> Result<u64, StateError> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM outbox WHERE last_seq <=
             (SELECT MIN(acked_seq) FROM sink_progress WHERE active = 1)
         RETURNING last_seq - first_seq + 1",
    )?;
    let mut removed = 0u64;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        removed += row.get::<_, i64>(0)?.unsigned_abs();
    }
    Ok(removed)
}

/// The events after `acked` and the bytes of their payloads: a sink's
/// backlog. Seqs are contiguous and rows are trimmed only from the front,
/// so this is arithmetic on the newest row and the first row after
/// `acked`, whose blob is read only when the sink stopped inside it.
pub(super) fn backlog(conn: &Connection, acked: i64) -> Result<(i64, i64), StateError> {
    let newest: Option<(i64, i64)> = conn
        .prepare_cached("SELECT last_seq, cum_bytes FROM outbox ORDER BY last_seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((newest_seq, newest_cum)) = newest else {
        return Ok((0, 0));
    };
    let mut first_after = conn.prepare_cached(
        "SELECT last_seq, first_seq, cum_bytes - bytes,
                CASE WHEN first_seq <= ?1 THEN events END
         FROM outbox WHERE last_seq > ?1 ORDER BY last_seq LIMIT 1",
    )?;
    let mut rows = first_after.query([acked])?;
    let Some(row) = rows.next()? else {
        return Ok((0, 0));
    };
    let (last_seq, first_seq, before): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
    let mut delivered = 0i64;
    let events = row
        .get_ref(3)?
        .as_blob_or_null()
        .map_err(|e| unreadable(last_seq, e.to_string()))?;
    if let Some(events) = events {
        // The sink stopped inside this row: its events up to `acked` are
        // not part of the backlog.
        for event in RowEvents::new(first_seq, last_seq, events) {
            let (seq, _, payload) = event?;
            if seq > acked {
                break;
            }
            delivered += i64::try_from(payload.len()).unwrap_or(i64::MAX);
        }
    }
    Ok((
        newest_seq - acked.max(first_seq - 1),
        (newest_cum - before - delivered).max(0),
    ))
}

/// The outbox depth: the events some active sink has not acknowledged,
/// from the newest seq back to the oldest row's first event or the least
/// progress of the active sinks, whichever is later (a row partly
/// acknowledged by all of them stays until all of it is). Each end of the
/// outbox in its own subquery on the key, so SQLite reads one end of the
/// table's b-tree for each; one `SELECT MAX(..) - MIN(..)` would read every
/// row. `sink_progress` has a row per sink.
pub(super) const DEPTH: &str = "SELECT COALESCE(
         (SELECT MAX(last_seq) FROM outbox)
         - MAX((SELECT first_seq FROM outbox ORDER BY last_seq LIMIT 1) - 1,
               COALESCE((SELECT MIN(acked_seq) FROM sink_progress WHERE active = 1), 0)),
         0)";

/// The seq of the oldest event still stored and of the newest, if any.
pub(super) fn ends(conn: &Connection) -> Result<(Option<i64>, Option<i64>), StateError> {
    Ok(conn
        .prepare_cached(
            "SELECT (SELECT first_seq FROM outbox ORDER BY last_seq LIMIT 1),
                    (SELECT MAX(last_seq) FROM outbox)",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?)
}

/// The highest seq ever given out (0 for none): AUTOINCREMENT keeps it in
/// sqlite_sequence, also once the outbox is empty.
pub(super) fn last_seq_given(conn: &Connection) -> Result<i64, StateError> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
        )?
        .query_row([], |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_what_was_encoded_and_name_what_is_wrong() {
        let mut blob = Vec::new();
        let events = [
            ("1209", "{\"a\":1}"),
            ("é 2\n", ""),
            ("", "{\"pad\":\"ééé\"}"),
        ];
        for (id, payload) in events {
            encode(&mut blob, id, payload);
        }
        let decoded: Vec<_> = Entries::new(&blob).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded, events);

        let cut = &blob[..blob.len() - 3];
        let errors: Vec<_> = Entries::new(cut).filter_map(Result::err).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("bytes"), "{}", errors[0]);
        let bad_header: Vec<_> = Entries::new(b"7 x\n1234567").collect();
        assert_eq!(
            bad_header,
            [Err("header \"7 x\" is not two sizes".to_string())]
        );
        assert!(Entries::new(b"no header").next().unwrap().is_err());
        assert!(Entries::new(b"").next().is_none());
    }
}
