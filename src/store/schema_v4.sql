-- Version 4: retention (HERALD_*_RETENTION).
--
-- Inbox rows outlive the outbox rows of their events: the outbox is a work
-- log, pruned after HERALD_LOG_RETENTION, while the inbox is the user's,
-- kept until HERALD_INBOX_RETENTION. So the inbox no longer references the
-- outbox. SQLite cannot drop a constraint in place: the table is rebuilt
-- with the same rows, ids and indexes.
CREATE TABLE notifications_v4 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq   INTEGER NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    actions     TEXT NOT NULL DEFAULT '[]',
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    seen_at     INTEGER,
    read_at     INTEGER,
    UNIQUE (event_seq, user_id)
);
INSERT INTO notifications_v4 (id, event_seq, user_id, type, title, body, actions, payload,
                              created_at, seen_at, read_at)
    SELECT id, event_seq, user_id, type, title, body, actions, payload, created_at, seen_at, read_at
    FROM notifications;
-- Ids are never reused (the live stream resumes by them): the new table
-- carries on from the old one's counter, not from its largest row.
DELETE FROM sqlite_sequence WHERE name = 'notifications_v4';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'notifications_v4', seq FROM sqlite_sequence WHERE name = 'notifications';
DROP TABLE notifications;
ALTER TABLE notifications_v4 RENAME TO notifications;
CREATE INDEX notifications_user_created ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL;
CREATE INDEX notifications_user_unseen ON notifications (user_id) WHERE seen_at IS NULL;

-- The pruner asks whether anything still refers to an outbox row.
CREATE INDEX digest_events_event ON digest_events (event_seq);
CREATE INDEX digests_flushed ON digests (flushed_seq) WHERE flushed_seq IS NOT NULL;
