-- The time slices of a backlog that a source reads in parallel (Asana:
-- each slice is its own offset stream over [stream_start, end_ms)). Only
-- slices still being read are kept: the transaction that stores a slice's
-- last page deletes its row, so the table is empty outside a backfill.
-- The columns mirror source_cursor: stream_start moves forward when a
-- slice restarts by time after its offset was rejected.
CREATE TABLE backfill_slice (
    source_id       TEXT    NOT NULL,
    slice           INTEGER NOT NULL,
    end_ms          INTEGER NOT NULL,
    position        TEXT,
    filters_hash    TEXT    NOT NULL,
    stream_start    INTEGER NOT NULL,
    last_event_time INTEGER,
    last_event_id   TEXT,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (source_id, slice)
) WITHOUT ROWID;
