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

-- Status webhooks.
