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

-- Locales. A user's locale (a canonical BCP 47 tag such as 'fr-BE'; NULL:
-- the default templates). An email is rendered once per event and locale:
-- the default body stays in email_bodies (always written, so every
-- delivery joins it), a translated one is kept here, and a delivery's
-- `locale` names the one it sends (NULL: the default), so every attempt
-- sends the same bytes.
ALTER TABLE users ADD COLUMN locale TEXT;
ALTER TABLE deliveries ADD COLUMN locale TEXT;
CREATE TABLE email_bodies_localized (
    event_seq  INTEGER NOT NULL REFERENCES outbox (seq),
    locale     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    html       TEXT NOT NULL,
    text       TEXT NOT NULL,
    PRIMARY KEY (event_seq, locale)
) WITHOUT ROWID;

-- Status webhooks.
