//! The outbox as stored: rows of consecutive events (see
//! `migrations/0006_outbox_rows.sql`).
//!
//! Each event has its own seq, and a row holds the events
//! `first_seq..=last_seq` of one source, so a commit pays one insert and a
//! trim one delete per row, not per event. Sinks never see rows: they read
//! events after a seq ([`read`]), and a row leaves the outbox once every
//! active sink acknowledged all of its events ([`trim`]).

use rusqlite::{params, OptionalExtension, Transaction};

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

    fn take(&mut self, len: usize) -> Result<&'a str, String> {
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
        Ok((self.take(id_len)?, self.take(payload_len)?))
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
        // sqlite_sequence holds the highest last_seq ever stored, also once
        // the outbox is empty; cum_bytes restarts with an empty outbox, as
        // only differences between rows present are used.
        let last_seq: i64 = tx
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
            )?
            .query_row([], |row| row.get(0))?;
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
    conn: &rusqlite::Connection,
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
        let mut seq = first_seq;
        for entry in Entries::new(blob) {
            let (event_id, payload) = entry.map_err(|reason| unreadable(last_seq, reason))?;
            if seq > last_seq {
                // Checked before the event is handed out: its seq would
                // belong to the next row.
                return Err(unreadable(
                    last_seq,
                    format!("it holds more events than its seqs {first_seq}..={last_seq}"),
                ));
            }
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
            seq += 1;
        }
        if seq != last_seq + 1 {
            return Err(unreadable(
                last_seq,
                format!(
                    "it holds {} events, its seqs {first_seq}..={last_seq} say {}",
                    seq - first_seq,
                    last_seq - first_seq + 1
                ),
            ));
        }
    }
    Ok(records)
}

/// Deletes the rows whose every event all active sinks acknowledged.
/// Returns how many events left.
pub(super) fn trim(conn: &rusqlite::Connection) -> Result<u64, StateError> {
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

/// The payload bytes of the events of a row with seq up to `through`.
pub(super) fn payload_bytes_through(
    last_seq: i64,
    first_seq: i64,
    blob: &[u8],
    through: i64,
) -> Result<i64, StateError> {
    let count = usize::try_from(through.min(last_seq) - first_seq + 1).unwrap_or(0);
    let mut bytes = 0i64;
    let mut read = 0;
    for entry in Entries::new(blob).take(count) {
        let (_, payload) = entry.map_err(|reason| unreadable(last_seq, reason))?;
        bytes += i64::try_from(payload.len()).unwrap_or(i64::MAX);
        read += 1;
    }
    if read < count {
        return Err(unreadable(
            last_seq,
            format!("it holds {read} events, its seqs {first_seq}..={last_seq} say more"),
        ));
    }
    Ok(bytes)
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
