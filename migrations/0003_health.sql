-- What each source and sink last did, for `auditrelay status` (which reads
-- the file while the daemon runs) and for restarts. Written by the daemon
-- every few seconds when something changed, never per event. `last_error`
-- holds the error's message with any configured credential removed.
CREATE TABLE component_health (
    role                 TEXT NOT NULL CHECK (role IN ('source', 'sink')),
    id                   TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    last_success_at      INTEGER,
    caught_up_at         INTEGER,
    last_error_at        INTEGER,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (role, id)
) WITHOUT ROWID;

-- Running total of payload bytes in seq order, so a sink's backlog in
-- bytes is the difference of two rows' totals instead of a scan of every
-- payload (a sink that is down may be a million events behind).
ALTER TABLE outbox ADD COLUMN cum_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET cum_bytes = totals.cum
FROM (SELECT seq, SUM(octet_length(payload)) OVER (ORDER BY seq) AS cum FROM outbox) AS totals
WHERE totals.seq = outbox.seq;
