-- herald schema, version 7: audience, inbox and the application's view of
-- delivery (SPEC 10). One section per capability.

-- Topics and their subscribers; a topic recipient's fan-out at dispatch.
CREATE TABLE topics (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Inbox archive and snooze.

-- Locales.

-- Status webhooks.
