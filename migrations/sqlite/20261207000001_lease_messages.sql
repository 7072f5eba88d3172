-- The message the lease's holder has sent to the user's agent: '' while it
-- is being sent (its id not known yet), its id once accepted. Another
-- replica waiting for the turn polls that message, and takes the turn as
-- soon as it has ended instead of waiting out the lease of a holder that
-- died. A lease whose message has an id is never taken over by expiry alone.
ALTER TABLE chat_leases ADD COLUMN agent_id TEXT;
ALTER TABLE chat_leases ADD COLUMN message_id TEXT;
ALTER TABLE chat_leases ADD COLUMN sent_at_ms BIGINT;
-- Who recorded the message: a holder that took the lease without knowing of
-- these columns (a replica of an older version) leaves them behind, and a
-- message recorded by another holder than the current one is not followed.
ALTER TABLE chat_leases ADD COLUMN message_holder TEXT;
