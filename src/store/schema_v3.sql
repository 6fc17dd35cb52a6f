-- herald schema, version 3: event results per recipient and per channel.
-- From this version the outbox's sent, deduped and suppressed count
-- recipients (SPEC 2.3), and these six columns count channels: what each
-- channel of the event's recipients got. Integers rather than one encoded
-- column: a count of 0 or 1, the usual one, costs a single header byte.
-- Rows dispatched before this version keep NULL here: their three counts
-- counted channels, and how those split by channel and recipient was never
-- stored, so they are left as they were (the API shows `channels: null`).
ALTER TABLE outbox ADD COLUMN inbox_sent INTEGER;
ALTER TABLE outbox ADD COLUMN inbox_deduped INTEGER;
ALTER TABLE outbox ADD COLUMN inbox_suppressed INTEGER;
ALTER TABLE outbox ADD COLUMN email_sent INTEGER;
ALTER TABLE outbox ADD COLUMN email_deduped INTEGER;
ALTER TABLE outbox ADD COLUMN email_suppressed INTEGER;
