-- herald schema on PostgreSQL, version 6: workflows in time (see
-- schema_v6.sql for what each column means).
ALTER TABLE outbox DROP CONSTRAINT outbox_status_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'dispatched', 'failed', 'cancelled'));
ALTER TABLE outbox ADD COLUMN due_at BIGINT;
ALTER TABLE outbox ADD COLUMN cancellation_key TEXT;
ALTER TABLE outbox ADD COLUMN throttled BIGINT;
ALTER TABLE outbox ADD COLUMN inbox_throttled BIGINT;
ALTER TABLE outbox ADD COLUMN email_throttled BIGINT;
CREATE INDEX outbox_due ON outbox (due_at) WHERE status = 'pending' AND due_at IS NOT NULL;
CREATE INDEX outbox_cancellation ON outbox (cancellation_key)
    WHERE status = 'pending' AND cancellation_key IS NOT NULL;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'retrying', 'sent', 'failed', 'dead', 'held', 'skipped'));
ALTER TABLE deliveries ADD COLUMN release_unless TEXT
    CHECK (release_unless IN ('seen', 'read'));
CREATE INDEX deliveries_held ON deliveries (next_attempt_at) WHERE status = 'held';

ALTER TABLE users ADD COLUMN timezone TEXT;
ALTER TABLE users ADD COLUMN quiet_from BIGINT;
ALTER TABLE users ADD COLUMN quiet_to BIGINT;

CREATE TABLE throttle_hits (
    type          TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    throttle_key  TEXT NOT NULL,
    at            BIGINT NOT NULL,
    event_seq     BIGINT NOT NULL
);
CREATE INDEX throttle_hits_window ON throttle_hits (type, recipient, throttle_key, at);
CREATE INDEX throttle_hits_at ON throttle_hits (at);

CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    recipients   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    subject_id   TEXT,
    repeat       TEXT NOT NULL,
    starts_at    BIGINT,
    ends_at      BIGINT,
    next_run_at  BIGINT,
    last_run_at  BIGINT,
    runs         BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE next_run_at IS NOT NULL;

-- Escalation and quiet hours: when a held email was released or skipped.
ALTER TABLE deliveries ADD COLUMN released_at BIGINT;
