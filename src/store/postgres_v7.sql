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

-- Who is subscribed to a topic. A user or topic deleted takes its
-- subscriptions with it. The key (topic, user) pages a topic's
-- subscribers in user id order; the index on the user serves the cascade.
CREATE TABLE topic_subscribers (
    topic_key   TEXT NOT NULL REFERENCES topics (key) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (topic_key, user_id)
);
CREATE INDEX topic_subscribers_user ON topic_subscribers (user_id);

-- An event's fan-out to its topics still under way: one row per event
-- (its topics are read from the event's body, kept until the row goes),
-- the last user id expanded, advanced in the transaction that writes each
-- page's inbox rows and deliveries, deleted with the last page. A row is
-- work: the scheduler expands it, after a restart too.
CREATE TABLE topic_fanouts (
    event_seq   BIGINT PRIMARY KEY,
    after_user  TEXT NOT NULL DEFAULT '',
    pages       BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- Inbox archive and snooze. A row is in the inbox (both NULL), archived, or
-- snoozed until a time, never both: archiving ends a snooze, snoozing
-- un-archives. The hot reads stay one range on a partial index each: the
-- unseen count and the default list index only the rows in the inbox.
ALTER TABLE notifications ADD COLUMN archived_at BIGINT;
ALTER TABLE notifications ADD COLUMN snoozed_until BIGINT;
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

-- Status webhooks (see schema_v7.sql for what each column means).
-- The application's endpoints (`/v1/webhooks`). `events` is a JSON array of
-- the kinds it subscribes to; `secret` (whsec_<base64>) signs every message.
-- `failing_since` is the first failure of the current run of failures (NULL
-- after a success); a run longer than the disable period sets `disabled_at`.
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    events           TEXT NOT NULL,
    secret           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    failing_since    BIGINT,
    disabled_at      BIGINT,
    disabled_reason  TEXT
);
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
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    claimed_by       BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at);
CREATE INDEX webhook_messages_endpoint ON webhook_messages (webhook_id);
