-- herald schema on PostgreSQL, version 7: audience, inbox and the
-- application's view of delivery (see schema_v7.sql for what each column
-- means). One section per capability.

-- Topics and their subscribers; a topic recipient's fan-out at dispatch.
CREATE TABLE topics (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Inbox archive and snooze.

-- Locales.

-- Status webhooks.
