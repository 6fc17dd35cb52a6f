-- herald schema, version 7: audience, inbox and the application's view of
-- delivery (SPEC 10). One section per capability.

-- Topics and their subscribers; a topic recipient's fan-out at dispatch.
CREATE TABLE topics (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Who is subscribed to a topic. A user or topic deleted takes its
-- subscriptions with it. The key (topic, user) pages a topic's
-- subscribers in user id order; the index on the user serves the cascade.
CREATE TABLE topic_subscribers (
    topic_key   TEXT NOT NULL REFERENCES topics (key) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (topic_key, user_id)
) WITHOUT ROWID;
CREATE INDEX topic_subscribers_user ON topic_subscribers (user_id);

-- An event's fan-out to its topics still under way: one row per event
-- (its topics are read from the event's body, kept until the row goes),
-- the last user id expanded, advanced in the transaction that writes each
-- page's inbox rows and deliveries, deleted with the last page. A row is
-- work: the scheduler expands it, after a restart too.
CREATE TABLE topic_fanouts (
    event_seq   INTEGER PRIMARY KEY,
    after_user  TEXT NOT NULL DEFAULT '',
    pages       INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

-- Inbox archive and snooze. A row is in the inbox (both NULL), archived, or
-- snoozed until a time, never both: archiving ends a snooze, snoozing
-- un-archives. The hot reads stay one range on a partial index each: the
-- unseen count and the default list index only the rows in the inbox.
ALTER TABLE notifications ADD COLUMN archived_at INTEGER;
ALTER TABLE notifications ADD COLUMN snoozed_until INTEGER;
DROP INDEX notifications_user_unseen;
CREATE INDEX notifications_user_unseen ON notifications (user_id)
    WHERE seen_at IS NULL AND archived_at IS NULL AND snoozed_until IS NULL;
DROP INDEX notifications_user_unread;
CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL AND snoozed_until IS NULL;
CREATE INDEX notifications_user_inbox ON notifications (user_id, created_at DESC, id DESC)
    WHERE archived_at IS NULL AND snoozed_until IS NULL;
CREATE INDEX notifications_user_archived ON notifications (user_id, created_at DESC, id DESC)
    WHERE archived_at IS NOT NULL;
-- The scheduler's timer: the next snooze to end.
CREATE INDEX notifications_snoozed ON notifications (snoozed_until)
    WHERE snoozed_until IS NOT NULL;

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
-- The application's endpoints (`/v1/webhooks`). `events` is a JSON array of
-- the kinds it subscribes to; `secret` (whsec_<base64>) signs every message.
-- `failing_since` is the first failure of the current run of failures (NULL
-- after a success); a run longer than the disable period sets `disabled_at`.
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,
    secret           TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    failing_since    INTEGER,
    disabled_at      INTEGER,
    disabled_reason  TEXT
) WITHOUT ROWID;
-- Messages owed to an endpoint, each written in the transaction of the
-- change it reports and deleted once the endpoint accepted it. `id` is the
-- `webhook-id` header; `body` the exact bytes every attempt sends. A claim
-- moves `next_attempt_at` past the request's timeout (a lease), so a crashed
-- sender's messages fall due again by themselves.
CREATE TABLE webhook_messages (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    body             TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    claimed_by       INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at);
CREATE INDEX webhook_messages_endpoint ON webhook_messages (webhook_id);
