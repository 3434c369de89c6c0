-- Events a sink rejected for good (a Kafka message over the size limit, a
-- topic it may not write), kept with the reason instead of blocking the
-- sink. `auditrelay dlq list | replay | purge` manages them; `replay` marks
-- rows for their sink to try again, before its next outbox batch.
CREATE TABLE dead_letter (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sink_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    source_id TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    payload   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    dead_at   INTEGER NOT NULL,
    replay    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letter_by_sink ON dead_letter (sink_id, replay, id);
