-- herald schema, version 6: workflows in time (SPEC 9).
-- SQLite cannot widen a CHECK in place, so `outbox` and `deliveries` are
-- rebuilt with their rows, keys and indexes (the migration runner turns
-- foreign keys off around the step and checks them before COMMIT). CHECKs
-- are spelled with OR: `IN (...)` builds a temporary B-tree per insert.

-- outbox: an event may be due later (`sendAt`: due_at, dispatched when
-- due), carry a cancellation key, and end `cancelled` before dispatch. The
-- result gains a fourth count, `throttled`, overall and per channel.
CREATE TABLE outbox_v6 (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    type             TEXT NOT NULL,
    body             TEXT NOT NULL,
    idempotency_key  TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'dispatched' OR status = 'failed'
                            OR status = 'cancelled'),
    created_at       INTEGER NOT NULL,
    dispatched_at    INTEGER,
    sent             INTEGER,
    deduped          INTEGER,
    suppressed       INTEGER,
    error            TEXT,
    kind             TEXT NOT NULL DEFAULT 'notification'
                     CHECK (kind = 'notification' OR kind = 'domain'),
    inbox_sent       INTEGER,
    inbox_deduped    INTEGER,
    inbox_suppressed INTEGER,
    email_sent       INTEGER,
    email_deduped    INTEGER,
    email_suppressed INTEGER,
    due_at           INTEGER,
    cancellation_key TEXT,
    throttled        INTEGER,
    inbox_throttled  INTEGER,
    email_throttled  INTEGER
);
INSERT INTO outbox_v6 (seq, id, type, body, idempotency_key, status, created_at, dispatched_at,
                       sent, deduped, suppressed, error, kind, inbox_sent, inbox_deduped,
                       inbox_suppressed, email_sent, email_deduped, email_suppressed)
    SELECT seq, id, type, body, idempotency_key, status, created_at, dispatched_at,
           sent, deduped, suppressed, error, kind, inbox_sent, inbox_deduped,
           inbox_suppressed, email_sent, email_deduped, email_suppressed
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (seq) WHERE status = 'pending';
CREATE UNIQUE INDEX outbox_idempotency ON outbox (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Events waiting for their time: the scheduler's next timer.
CREATE INDEX outbox_due ON outbox (due_at) WHERE status = 'pending' AND due_at IS NOT NULL;
CREATE INDEX outbox_cancellation ON outbox (cancellation_key)
    WHERE status = 'pending' AND cancellation_key IS NOT NULL;

-- deliveries: an email may be `held` until next_attempt_at (escalation,
-- quiet hours), released then unless the recipient's inbox row of the
-- event is seen or read by then (`release_unless`), and end `skipped`.
CREATE TABLE deliveries_v6 (
    id               TEXT PRIMARY KEY,
    event_seq        INTEGER NOT NULL REFERENCES outbox (seq),
    recipient        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    address          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'retrying' OR status = 'sent'
                            OR status = 'failed' OR status = 'dead' OR status = 'held'
                            OR status = 'skipped'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    provider         TEXT,
    provider_id      TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    batch_id         TEXT,
    claimed_by       INTEGER,
    release_unless   TEXT CHECK (release_unless = 'seen' OR release_unless = 'read'),
    UNIQUE (event_seq, recipient, channel)
) WITHOUT ROWID;
INSERT INTO deliveries_v6 (id, event_seq, recipient, channel, address, status, attempts,
                           next_attempt_at, provider, provider_id, last_error, created_at,
                           updated_at, batch_id, claimed_by)
    SELECT id, event_seq, recipient, channel, address, status, attempts,
           next_attempt_at, provider, provider_id, last_error, created_at,
           updated_at, batch_id, claimed_by
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v6 RENAME TO deliveries;
CREATE INDEX deliveries_pending ON deliveries (created_at) WHERE status = 'pending';
CREATE INDEX deliveries_retrying ON deliveries (next_attempt_at) WHERE status = 'retrying';
CREATE INDEX deliveries_unsent ON deliveries (status) WHERE status = 'failed' OR status = 'dead';
CREATE INDEX deliveries_held ON deliveries (next_attempt_at) WHERE status = 'held';

-- A user's time zone (IANA name) and quiet hours, minutes after local
-- midnight; `from` after `to` spans midnight. NULL: none.
ALTER TABLE users ADD COLUMN timezone TEXT;
ALTER TABLE users ADD COLUMN quiet_from INTEGER;
ALTER TABLE users ADD COLUMN quiet_to INTEGER;

-- One row per notification of a throttled type that went out, per
-- (type, recipient, rendered key): the sliding window counts them. Rows
-- older than the type's window are pruned by the scheduler.
CREATE TABLE throttle_hits (
    type          TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    throttle_key  TEXT NOT NULL,
    at            INTEGER NOT NULL,
    event_seq     INTEGER NOT NULL
);
CREATE INDEX throttle_hits_window ON throttle_hits (type, recipient, throttle_key, at);
CREATE INDEX throttle_hits_at ON throttle_hits (at);

-- Recurring schedules (`/v1/schedules`): each run enqueues one event under
-- the idempotency key `schedule:<id>:<run time>`, so a run is enqueued
-- once however many instances or restarts reach it. next_run_at NULL: the
-- schedule has ended.
CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    recipients   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    subject_id   TEXT,
    repeat       TEXT NOT NULL,
    starts_at    INTEGER,
    ends_at      INTEGER,
    next_run_at  INTEGER,
    last_run_at  INTEGER,
    runs         INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE next_run_at IS NOT NULL;

-- Escalation and quiet hours: when a held email was released (handed to
-- the senders) or skipped, kept once it is sent (updated_at moves on).
ALTER TABLE deliveries ADD COLUMN released_at INTEGER;
