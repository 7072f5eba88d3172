-- The outcome of a chat that is answered later (Prefer: respond-async) or
-- that carries an Idempotency-Key, readable by every replica. status is 0
-- while the owner process carries the chat and renews lease_until_ms; once
-- that lease has run out unrenewed the owner is gone and readers report the
-- chat as failed. A row is purged once both of its windows have passed:
-- visible_until_ms (async: fetchable by id) and key_until_ms (keyed: the key
-- answers repeats).
CREATE TABLE IF NOT EXISTS chat_records (
    id               TEXT PRIMARY KEY,
    user_number      TEXT NOT NULL,
    idempotency_key  TEXT,
    fingerprint      TEXT NOT NULL,
    owner            TEXT NOT NULL,
    status           INTEGER NOT NULL DEFAULT 0,
    body             TEXT,
    lease_until_ms   BIGINT NOT NULL,
    visible_until_ms BIGINT,
    key_until_ms     BIGINT
);
-- NULL keys (unkeyed async chats, released keys) never collide.
CREATE UNIQUE INDEX IF NOT EXISTS chat_records_user_key
    ON chat_records (user_number, idempotency_key);
CREATE INDEX IF NOT EXISTS chat_records_owner
    ON chat_records (owner) WHERE status = 0;
