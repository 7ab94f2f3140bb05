-- The lines guard probes the primary key of `invoices` once per distinct invoice of the
-- statement's lines, and nothing else. Left to the planner, the join of the transition table
-- with `invoices` was planned once per session and could read every invoice of the month on
-- every batch (a hash of all invoices, or, with a rollup's sequential scans disabled, a walk of
-- the whole primary key): measured at 10,000 tenants, one batch's line insert grew from 40 ms
-- to 2.7 s as the month's invoices accumulated. Nested loops over the index are the one plan
-- that stays bounded by the statement, so the function asks for nothing else.
CREATE OR REPLACE FUNCTION invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    bad uuid;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT i.id INTO bad FROM (SELECT DISTINCT invoice_id FROM new_lines) l
        JOIN invoices i ON i.id = l.invoice_id
        WHERE i.status <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NULL AND TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT i.id INTO bad FROM (SELECT DISTINCT invoice_id FROM old_lines) l
        JOIN invoices i ON i.id = l.invoice_id
        WHERE i.status <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is not a draft: its lines cannot change', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
