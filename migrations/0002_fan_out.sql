-- Fan-out: a rollup's tenants are listed once, when its request is first seen, and split into
-- work items that any replica may take from the BILLING_WORK work queue. An item commits in one
-- transaction with its invoices, so a redelivered item finds itself done and changes nothing.

ALTER TABLE rollup_runs
    DROP COLUMN cursor_tenant,
    ADD COLUMN tenants_total int NOT NULL DEFAULT 0,
    ADD COLUMN items_total int NOT NULL DEFAULT 0,
    ADD COLUMN unbilled_deployments bigint;

CREATE TABLE rollup_items (
    request_id        text NOT NULL REFERENCES rollup_runs ON DELETE CASCADE,
    item_no           int NOT NULL,
    tenant_ids        text[] NOT NULL,
    tenant_count      int NOT NULL,
    -- Set when a failing batch is retried one tenant per transaction: the last tenant done.
    cursor_tenant     text,
    invoices_issued   int NOT NULL DEFAULT 0,
    invoices_drafted  int NOT NULL DEFAULT 0,
    invoices_skipped  int NOT NULL DEFAULT 0,
    tenants_failed    jsonb NOT NULL DEFAULT '[]',
    processed_by      text,
    done_at           timestamptz,
    PRIMARY KEY (request_id, item_no)
);

-- A batch writes its lines before its invoices, so that the invoice rows, which carry the
-- numbers, are the last thing written while the number counter is held.
ALTER TABLE invoice_lines
    DROP CONSTRAINT invoice_lines_invoice_id_fkey,
    ADD CONSTRAINT invoice_lines_invoice_id_fkey FOREIGN KEY (invoice_id)
        REFERENCES invoices ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;

-- Only a draft may be deleted (a recomputed draft is replaced by a new row with its id).
CREATE FUNCTION invoices_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'draft' THEN
        RAISE EXCEPTION 'invoice % is %, it cannot be deleted', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER invoices_delete_guard BEFORE DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_delete_guard();

-- The lines of an issued, paid or void invoice are as final as its amounts: none may be added,
-- changed or removed. Statement-level, so a batch of thousands of lines costs one join.
CREATE FUNCTION invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad uuid;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT i.id INTO bad FROM new_lines l JOIN invoices i ON i.id = l.invoice_id
        WHERE i.status <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NULL AND TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT i.id INTO bad FROM old_lines l JOIN invoices i ON i.id = l.invoice_id
        WHERE i.status <> 'draft' LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is not a draft: its lines cannot change', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER invoice_lines_guard_insert AFTER INSERT ON invoice_lines
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION invoice_lines_guard();
CREATE TRIGGER invoice_lines_guard_update AFTER UPDATE ON invoice_lines
    REFERENCING OLD TABLE AS old_lines NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_lines_guard();
CREATE TRIGGER invoice_lines_guard_delete AFTER DELETE ON invoice_lines
    REFERENCING OLD TABLE AS old_lines FOR EACH STATEMENT EXECUTE FUNCTION invoice_lines_guard();
