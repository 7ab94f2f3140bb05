-- The lines guard looks up each distinct invoice of the statement's lines by primary key, and
-- nothing else, planned afresh at each statement. A static query in PL/pgSQL is planned once
-- per session and the plan kept; planned while `invoices` was nearly empty, the lookup chose
-- `invoices_period`, whose second column is `id`, and so walked the whole index once per
-- invoice on every later batch: measured at 100,000 tenants, one session's line inserts grew
-- from 35 ms to 1.9 s a batch as the month's invoices accumulated (2.6 s for 2,000 lines
-- against 100,000 invoices, reproduced by hand). Planned at each execution the primary key
-- wins by its size; sequential scans are off so a large batch cannot turn the probes into a
-- scan of the month's invoices, and JIT is off because that disabled scan inflates the
-- estimate past `jit_above_cost` (100 ms to compile).
CREATE OR REPLACE FUNCTION invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql
    SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    bad uuid;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE 'SELECT l.invoice_id FROM (SELECT DISTINCT invoice_id FROM new_lines) l
                 WHERE (SELECT i.status FROM invoices i WHERE i.id = l.invoice_id) <> ''draft''
                 LIMIT 1' INTO bad;
    END IF;
    IF bad IS NULL AND TG_OP IN ('UPDATE', 'DELETE') THEN
        EXECUTE 'SELECT l.invoice_id FROM (SELECT DISTINCT invoice_id FROM old_lines) l
                 WHERE (SELECT i.status FROM invoices i WHERE i.id = l.invoice_id) <> ''draft''
                 LIMIT 1' INTO bad;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is not a draft: its lines cannot change', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
