-- herald schema, version 2: email batches.
-- Email deliveries created by one dispatch transaction may go out together
-- in one request to the provider's batch endpoint, under the batch id as
-- Idempotency-Key. Membership is written with the deliveries and never
-- changes while the batch may have gone out, so every attempt is the
-- identical request; only a refused batch (nothing sent) is broken up, its
-- members then going out alone under their own ids. NULL: sent alone.
ALTER TABLE deliveries ADD COLUMN batch_id TEXT;

-- Where a batch's members are: among the deliveries of events first_seq to
-- last_seq, found through deliveries' (event_seq, recipient, channel) key.
-- One row per batch instead of an index entry per delivery, which cost the
-- dispatcher a twentieth of its time.
CREATE TABLE mail_batches (
    id         TEXT PRIMARY KEY,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL
) WITHOUT ROWID;
