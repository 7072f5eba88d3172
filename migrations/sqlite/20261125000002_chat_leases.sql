-- One row per user with a chat in progress somewhere in the cluster: the
-- holder may talk to the user's agent until expires_at_ms (renewed while the
-- chat runs; a crashed holder's lease simply expires).
CREATE TABLE IF NOT EXISTS chat_leases (
    user_number   TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
