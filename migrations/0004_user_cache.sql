-- Users looked up to enrich events, per source. 'found' rows carry the
-- user's name and email (personal data, not secrets: never a token);
-- 'unknown' rows remember that the API has no such user (404, deleted) so
-- it is not asked again on every event. A row is used until expires_at
-- (unix ms), then fetched again; expired rows are pruned.
CREATE TABLE user_cache (
    source_id  TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('found', 'unknown')),
    name       TEXT,
    email      TEXT,
    fetched_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, user_id)
) WITHOUT ROWID;

CREATE INDEX user_cache_expiry ON user_cache (expires_at);
