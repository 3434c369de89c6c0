-- auditrelay state schema, version 1.
--
-- One file per migration, numbered; the binary embeds them and applies the
-- missing ones at start, each in its own transaction, recording it in
-- schema_migrations. Never edit a migration that has shipped: add a new one.

-- Where each source is in its API. `position` is the source's own cursor
-- (Asana: the opaque next_page.offset); `filters_hash` binds it to the
-- filters it was issued for; `stream_start` is the start_at (unix ms) of
-- the current stream, sent with each of its requests; `last_event_time`
-- (unix ms) and `last_event_id` name the newest event stored, from which a
-- new stream starts when a position is lost.
CREATE TABLE source_cursor (
    source_id       TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    position        TEXT,
    filters_hash    TEXT NOT NULL,
    stream_start    INTEGER,
    last_event_time INTEGER,
    last_event_id   TEXT,
    updated_at      INTEGER NOT NULL
);

-- The durable buffer between sources and sinks. `seq` only grows
-- (AUTOINCREMENT never reuses a value), so sinks track progress by seq.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    event_time  INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    payload     TEXT NOT NULL
);

-- Dedup window: every (source, event id) stored recently. An id present here
-- never enters the outbox again. Pruned by event time and by insert time.
CREATE TABLE seen (
    source_id  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (source_id, event_id)
) WITHOUT ROWID;
CREATE INDEX seen_by_time ON seen (source_id, event_time);

-- How far each sink has delivered: every outbox row with seq <= acked_seq
-- was acknowledged by that sink. `active` is 0 for sinks no longer in the
-- configuration; they do not hold back outbox trimming.
CREATE TABLE sink_progress (
    sink_id    TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    acked_seq  INTEGER NOT NULL,
    active     INTEGER NOT NULL DEFAULT 1,
    updated_at INTEGER NOT NULL
);

-- Records a source could not turn into an event, kept with the reason so an
-- operator can look at them; the rest of their page flows on. A record
-- read again (a page retried after a restart) is kept once: `raw_hash` is
-- the SHA-256 of `raw`. The newest rows are kept, up to a bound.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source_id   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    raw         TEXT NOT NULL,
    raw_hash    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (source_id, raw_hash)
);
