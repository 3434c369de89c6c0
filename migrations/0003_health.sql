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
