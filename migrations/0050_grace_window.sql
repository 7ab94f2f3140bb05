-- Grace window (CONTRACT.md section 5a): a rollup's invoice may stay a draft until
-- finalizes_at, absorbing usage that is metered late, and is then issued by a finalizer.

-- A tenant's own window as an ISO 8601 duration (canonical text); NULL = the platform default.
ALTER TABLE tenants ADD COLUMN grace_period text;

-- When an open draft is issued. Only drafts have one: a draft without it is a `draft` run's,
-- which is issued by hand.
ALTER TABLE invoices
    ADD COLUMN finalizes_at timestamptz,
    ADD CONSTRAINT invoices_finalizes_only_drafts CHECK (finalizes_at IS NULL OR status = 'draft');

-- A draft that leaves `draft` (issued, or voided by an admin) leaves its window too, whichever
-- path changed it.
CREATE FUNCTION invoices_close_window() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'draft' THEN
        NEW.finalizes_at := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_close_window BEFORE UPDATE OF status ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_close_window();

-- The finalizer's scan: open drafts by the time they are due.
CREATE INDEX invoices_open_drafts ON invoices (finalizes_at)
    WHERE status = 'draft' AND finalizes_at IS NOT NULL;

-- (tenant, period) pairs whose open draft has new usage: marked by usage ingestion in the
-- transaction of the insert, drained by the refresher, which recomputes those drafts only.
CREATE TABLE draft_refresh (
    tenant_id     text NOT NULL,
    period_start  date NOT NULL,
    marked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start)
);
