-- herald schema, version 1.
-- Applied once by the migration runner (src/store/migrate.rs) inside one
-- transaction together with its schema_version bump. Times are Unix epoch
-- milliseconds. Later versions append steps; this file never changes shape
-- once released.
-- CHECK constraints spell out their values with OR: SQLite builds a
-- temporary B-tree for every `IN` list of three or more values each time
-- a row is written, which cost the dispatcher a tenth of its time.

-- People who receive notifications. Ids are the embedding application's own.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX users_email ON users (email);

-- API tokens, stored as SHA-256 hex of the secret; the secret is shown once.
CREATE TABLE api_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- The transactional outbox: one row per accepted event, written in the
-- caller's transaction. `seq` is the dispatch order, `id` the public event id.
-- The dispatcher moves a row from pending to dispatched (or failed) in the
-- same transaction that writes its inbox rows and deliveries, and stores the
-- event's result there.
CREATE TABLE outbox (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    type             TEXT NOT NULL,
    body             TEXT NOT NULL,
    idempotency_key  TEXT,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'dispatched' OR status = 'failed'),
    created_at       INTEGER NOT NULL,
    dispatched_at    INTEGER,
    sent             INTEGER,
    deduped          INTEGER,
    suppressed       INTEGER,
    error            TEXT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE status = 'pending';
-- Partial: most events carry no key, and an index entry per row would cost
-- every enqueue a page write for nothing.
CREATE UNIQUE INDEX outbox_idempotency ON outbox (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The in-app inbox. One row per (event, user): the unique key makes a
-- re-driven dispatch unable to duplicate a row.
-- AUTOINCREMENT: ids are never reused, even after the newest row is
-- deleted, because the live stream (GET /v1/inbox/stream) uses them as SSE
-- event ids and resumes after the last one a client saw.
CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq   INTEGER NOT NULL REFERENCES outbox (seq),
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
CREATE INDEX notifications_user_created ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread ON notifications (user_id, created_at DESC, id DESC)
    WHERE read_at IS NULL;
CREATE INDEX notifications_user_unseen ON notifications (user_id) WHERE seen_at IS NULL;

-- The rendered email of an event, stored once when its first delivery is
-- created: every delivery of the event sends exactly these bytes on every
-- attempt. Apart from the deliveries, so that recording an attempt rewrites
-- a small row rather than the whole body.
CREATE TABLE email_bodies (
    event_seq  INTEGER PRIMARY KEY REFERENCES outbox (seq),
    subject    TEXT NOT NULL,
    html       TEXT NOT NULL,
    text       TEXT NOT NULL
);

-- Email deliveries: one row per (event, recipient, channel), rendered once at
-- creation so that every retry sends the identical body under the same
-- Idempotency-Key (the delivery id).
CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    event_seq        INTEGER NOT NULL REFERENCES outbox (seq),
    recipient        TEXT NOT NULL,
    channel          TEXT NOT NULL,
    address          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'retrying' OR status = 'sent'
                            OR status = 'failed' OR status = 'dead'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    provider         TEXT,
    provider_id      TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (event_seq, recipient, channel)
) WITHOUT ROWID;
CREATE INDEX deliveries_pending ON deliveries (created_at) WHERE status = 'pending';
CREATE INDEX deliveries_retrying ON deliveries (next_attempt_at) WHERE status = 'retrying';
-- Deliveries that need an operator's eye. Sent ones, nearly all of them,
-- are left out: indexing them cost every send two index writes.
CREATE INDEX deliveries_unsent ON deliveries (status) WHERE status = 'failed' OR status = 'dead';

-- ---------------------------------------------------------------------------
-- Reference application (issue 3): organizations, members, invitations, the
-- append-only audit log, processed webhook events and plan entitlements.
-- Every org-scoped row carries org_id; the app reaches them only through the
-- tenant-scoped transaction helper (src/app/tenant.rs).
-- ---------------------------------------------------------------------------

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE members (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role = 'owner' OR role = 'admin' OR role = 'member'),
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, user_id)
);
CREATE INDEX members_user ON members (user_id);
CREATE INDEX members_org_role ON members (org_id, role);

-- The accept token is stored as its SHA-256; the secret exists only in the
-- invitation email and the API response that created it.
CREATE TABLE invitations (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations (id),
    email             TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role = 'owner' OR role = 'admin' OR role = 'member'),
    token_hash        TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status = 'pending' OR status = 'accepted' OR status = 'revoked'
                             OR status = 'expired'),
    inviter_user_id   TEXT NOT NULL REFERENCES users (id),
    accepted_user_id  TEXT REFERENCES users (id),
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    accepted_at       INTEGER
);
-- At most one pending invitation per (org, address); addresses compare
-- case-insensitively.
CREATE UNIQUE INDEX invitations_one_pending ON invitations (org_id, lower(email))
    WHERE status = 'pending';
CREATE INDEX invitations_org ON invitations (org_id, created_at DESC);

-- Append-only: the triggers refuse UPDATE and DELETE, even from raw SQL.
CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations (id),
    actor_user_id  TEXT,
    action         TEXT NOT NULL,
    subject_type   TEXT NOT NULL,
    subject_id     TEXT NOT NULL,
    payload        TEXT NOT NULL DEFAULT '{}',
    created_at     INTEGER NOT NULL
);
CREATE INDEX audit_log_org ON audit_log (org_id, id DESC);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Webhook events claimed once, in the same transaction as their handling.
CREATE TABLE processed_events (
    source        TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    type          TEXT NOT NULL,
    processed_at  INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;

-- One billing entitlement per organization, kept in step with Stripe.
-- last_event_at (ms) is the `created` of the newest subscription event
-- applied; older events are stale and ignored.
CREATE TABLE plan_entitlements (
    org_id              TEXT PRIMARY KEY REFERENCES organizations (id),
    subscription_id     TEXT UNIQUE,
    customer_id         TEXT,
    plan                TEXT,
    status              TEXT NOT NULL,
    current_period_end  INTEGER,
    last_event_at       INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- ---------------------------------------------------------------------------
-- Notification policy (issue 5): preferences, dedup windows, digests.
-- ---------------------------------------------------------------------------

-- Per user x type x channel switches. `type` is a registry type or '*', which
-- switches a channel off for every non-critical type. No row means the
-- registry default (on, unless the type lists the channel in `defaultOff`).
CREATE TABLE preferences (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    channel     TEXT NOT NULL CHECK (channel IN ('inbox', 'email')),
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, type, channel)
) WITHOUT ROWID;

-- When (type, recipient, subject, rendered dedup key) was last notified; an
-- identical event inside the type's window after that is counted `deduped`.
-- Absent subject ids and dedup keys are stored as ''.
CREATE TABLE dedup_marks (
    type         TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    dedup_key    TEXT NOT NULL,
    notified_at  INTEGER NOT NULL,
    PRIMARY KEY (type, recipient, subject_id, dedup_key)
) WITHOUT ROWID;

-- Pending digests: events of a digested type for one (type, recipient,
-- rendered key) collected until `due_at` (fixed when the first event opened
-- it). The scheduler closes a due digest by writing one outbox row (the
-- original type for one event, else `batch_type`) in the same transaction
-- that marks it flushed, so a crash can neither lose nor repeat it.
CREATE TABLE digests (
    id             INTEGER PRIMARY KEY,
    type           TEXT NOT NULL,
    batch_type     TEXT NOT NULL,
    recipient_key  TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    digest_key     TEXT NOT NULL,
    channels       TEXT NOT NULL,
    opened_at      INTEGER NOT NULL,
    due_at         INTEGER NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'flushed')),
    flushed_seq    INTEGER REFERENCES outbox (seq),
    flushed_at     INTEGER
);
CREATE INDEX digests_open ON digests (type, recipient_key, digest_key) WHERE status = 'open';
CREATE INDEX digests_due ON digests (due_at) WHERE status = 'open';

-- The events a digest holds, in arrival order; one row per (digest, event).
CREATE TABLE digest_events (
    digest_id   INTEGER NOT NULL REFERENCES digests (id),
    event_seq   INTEGER NOT NULL REFERENCES outbox (seq),
    subject_id  TEXT,
    payload     TEXT NOT NULL,
    PRIMARY KEY (digest_id, event_seq)
) WITHOUT ROWID;

-- ---------------------------------------------------------------------------
-- Domain events and referral credits (issue 7).
-- ---------------------------------------------------------------------------

-- Domain events (`invitation.accepted`, `organization.provisioned`) share the
-- outbox with notification events; `kind` tells the dispatcher to hand them
-- to the listeners (src/notify/listeners.rs) instead of the registry.
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'notification'
    CHECK (kind IN ('notification', 'domain'));

-- One row per (domain event, listener), written when the dispatcher routes
-- the event. A listener's run is marked done in the same transaction as the
-- listener's own writes, so a restart neither skips nor replays it.
CREATE TABLE listener_runs (
    event_seq        INTEGER NOT NULL REFERENCES outbox (seq),
    listener         TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status = 'pending' OR status = 'retrying' OR status = 'done'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    done_at          INTEGER,
    PRIMARY KEY (event_seq, listener)
) WITHOUT ROWID;
CREATE INDEX listener_runs_due ON listener_runs (listener, next_attempt_at)
    WHERE status != 'done';

-- The credit ledger: append-only grants, one per unique `ref_id`
-- (`referral:<invitationId>:referrer|referee`), so a replayed grant cannot
-- credit twice. A user's balance is the sum of their rows.
CREATE TABLE credit_ledger (
    id          INTEGER PRIMARY KEY,
    ref_id      TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    amount      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX credit_ledger_user ON credit_ledger (user_id, id DESC);

-- ---------------------------------------------------------------------------
-- The inbox page (issue 8): browser sessions.
-- ---------------------------------------------------------------------------

-- A signed-in browser: the cookie carries a random secret, stored here only
-- as its SHA-256 (like API tokens), so the database never holds a usable
-- credential and logout revokes the session server-side.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_user ON sessions (user_id);
