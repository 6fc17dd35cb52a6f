-- herald schema, version 2: email batches.
-- Email deliveries created by one dispatch transaction may go out together
-- in one request to the provider's batch endpoint, under the batch id as
-- Idempotency-Key. Membership is written with the deliveries and never
-- changes while the batch may have gone out, so every attempt is the
-- identical request; only a refused batch (nothing sent) is broken up, its
-- members then going out alone under their own ids. NULL: sent alone.
ALTER TABLE deliveries ADD COLUMN batch_id TEXT;
CREATE INDEX deliveries_batch ON deliveries (batch_id) WHERE batch_id IS NOT NULL;
