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
ALTER TABLE users ADD COLUMN locale TEXT;
ALTER TABLE deliveries ADD COLUMN locale TEXT;
CREATE TABLE email_bodies_localized (
    event_seq  BIGINT NOT NULL REFERENCES outbox (seq),
    locale     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    html       TEXT NOT NULL,
    text       TEXT NOT NULL,
    PRIMARY KEY (event_seq, locale)
);

-- Status webhooks.
