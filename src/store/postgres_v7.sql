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

-- Inbox archive and snooze.

-- Locales.

-- Status webhooks.
