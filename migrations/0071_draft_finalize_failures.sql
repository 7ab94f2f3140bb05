-- Due grace drafts whose final recompute failed (their tenant's data cannot be priced). Each is
-- tried again after a growing delay, with its cause kept here, instead of every finalizer
-- round: drafts that keep failing would otherwise stay the oldest due and fill every batch,
-- and the drafts due behind them would never be reached.
--
-- A row goes with its draft's row: issuing or successfully refreshing a draft rewrites it
-- (same id, new row), which ends its failures; a voided draft keeps them, as history.
CREATE TABLE draft_finalize_failures (
    invoice_id  uuid PRIMARY KEY REFERENCES invoices ON DELETE CASCADE,
    attempts    int NOT NULL CHECK (attempts > 0),
    failed_at   timestamptz NOT NULL,
    retry_at    timestamptz NOT NULL,
    reason      text NOT NULL
);

-- The finalizer's scan of failed drafts whose delay is over.
CREATE INDEX draft_finalize_failures_retry ON draft_finalize_failures (retry_at);
