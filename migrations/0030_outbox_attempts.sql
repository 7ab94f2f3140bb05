-- The outbox relay never stalls on one bad row: each row counts its failed attempts, keeps the
-- last error, backs off on its own (next_attempt_at), and is parked (parked_at) when it can
-- never be published or keeps failing, so the rows behind it go out. Parked rows stay for an
-- operator (`invoicer outbox parked`, `invoicer outbox retry`).
ALTER TABLE outbox
    ADD COLUMN attempts         int NOT NULL DEFAULT 0,
    ADD COLUMN last_error       text,
    ADD COLUMN next_attempt_at  timestamptz,
    ADD COLUMN parked_at        timestamptz;

-- What the relay claims: unpublished and not parked, oldest first.
DROP INDEX IF EXISTS outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL;
-- Pruning published rows after the retention period.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
