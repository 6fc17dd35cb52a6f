-- herald schema, version 5: several instances on one database.
-- Each running herald (and each one-shot command that sends) registers a
-- row here; a server refreshes `heartbeat_at` while it runs and deletes
-- its row when it stops. An instance whose heartbeat is older than the
-- lease (HERALD_LEASE_MS) is taken for dead.
CREATE TABLE instances (
    id            INTEGER PRIMARY KEY,
    started_at    INTEGER NOT NULL,
    heartbeat_at  INTEGER NOT NULL,
    host          TEXT NOT NULL DEFAULT '',
    pid           INTEGER NOT NULL DEFAULT 0
);

-- The instance whose senders hold a pending delivery. Only that instance
-- sends it, until it is taken for dead and another takes its deliveries
-- over; NULL (deliveries from before this version, re-armed ones) belongs
-- to whoever claims it first.
ALTER TABLE deliveries ADD COLUMN claimed_by INTEGER;
