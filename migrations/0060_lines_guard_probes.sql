-- The lines guard looks up each distinct invoice of the statement's lines by primary key, and
-- nothing else. Its query has no parameters, so PL/pgSQL plans it once per session and keeps
-- the plan; planned while `invoices` was nearly empty, a join could read every invoice of the
-- month on every later batch (a hash of all invoices; a walk of the whole primary key with
-- sequential scans disabled; or the invoices as the outer side of a nested loop): measured at
-- 100,000 tenants, one batch's line insert grew from 35 ms to 1.9 s on some sessions as the
-- month's invoices accumulated. A scalar subquery per distinct invoice has no join order to
-- choose, and with sequential scans off its one plan is the primary-key probe (JIT off: the
-- disabled scan inflates the estimate past `jit_above_cost`, and compiling costs 100 ms).
CREATE OR REPLACE FUNCTION invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    bad uuid;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT l.invoice_id INTO bad FROM (SELECT DISTINCT invoice_id FROM new_lines) l
        WHERE (SELECT i.status FROM invoices i WHERE i.id = l.invoice_id) <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NULL AND TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT l.invoice_id INTO bad FROM (SELECT DISTINCT invoice_id FROM old_lines) l
        WHERE (SELECT i.status FROM invoices i WHERE i.id = l.invoice_id) <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is not a draft: its lines cannot change', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
