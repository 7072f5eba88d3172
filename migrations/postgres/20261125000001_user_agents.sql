CREATE TABLE IF NOT EXISTS user_agents (
    user_number TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
