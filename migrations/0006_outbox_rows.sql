-- The outbox keeps a page's events together: one row holds up to a bound
-- of consecutive events (seq first_seq..=last_seq) of one source, so a
-- commit pays one b-tree insert and a trim one delete per row instead of
-- per event. Every event keeps its own seq, so sink progress, dead letters
-- and the dedup window are unchanged.
--
-- `events` is the events one after the other, each as a header line
-- "<event id bytes> <payload bytes>\n" followed by the event id and the
-- payload (the serialized envelope). `bytes` is the sum of the payloads'
-- sizes, `cum_bytes` the running total through this row (a sink's backlog
-- in bytes is arithmetic on two rows, as before).
--
-- last_seq is the key: AUTOINCREMENT keeps the highest seq ever stored in
-- sqlite_sequence, so seqs still only grow when the outbox empties.
ALTER TABLE outbox RENAME TO outbox_v5;

CREATE TABLE outbox (
    last_seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq   INTEGER NOT NULL,
    source_id   TEXT    NOT NULL,
    enqueued_at INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    cum_bytes   INTEGER NOT NULL,
    events      BLOB    NOT NULL,
    CHECK (first_seq <= last_seq)
);

-- Every stored event becomes a row of one.
INSERT INTO outbox (last_seq, first_seq, source_id, enqueued_at, bytes, cum_bytes, events)
SELECT seq, seq, source_id, enqueued_at, octet_length(payload), cum_bytes,
       CAST(octet_length(event_id) || ' ' || octet_length(payload) || char(10)
            || event_id || payload AS BLOB)
FROM outbox_v5 ORDER BY seq;

-- An emptied outbox still knows the last seq it gave out. (The INSERT
-- above made the new table's sqlite_sequence row, even with no rows.)
INSERT INTO sqlite_sequence (name, seq)
SELECT 'outbox', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox');
UPDATE sqlite_sequence
SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox_v5'), 0))
WHERE name = 'outbox';

DROP TABLE outbox_v5;
