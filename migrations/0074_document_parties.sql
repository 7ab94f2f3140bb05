-- An issued tax invoice's document never changes (CONTRACT.md 5b, v3): the supplier and the
-- recipient it shows are recorded with it, by the statement that issues it, instead of being
-- looked up again (the tenant's current legal details, the rendering worker's SELLER_*) at each
-- render. The recipient is recorded as printed: its legal name, or its tenant id without one.
--
-- NULL seller_name: the issuing worker had no supplier configured (documents were off); NULL
-- recipient_name: issued before this migration. The first document produced for such an invoice
-- records what it showed, once (`store::invoices::record_parties`), so every later render shows
-- the same. Drafts record nothing: they are not tax invoices and show who is in force now.
--
-- Nullable columns without defaults: added without rewriting the table. A future document (an
-- adjustment note, 5c) gets the same six columns, checks and triggers on its own table.
ALTER TABLE invoices
    ADD COLUMN seller_name       text,
    ADD COLUMN seller_abn        text,
    ADD COLUMN seller_address    text,
    ADD COLUMN recipient_name    text,
    ADD COLUMN recipient_abn     text,
    ADD COLUMN recipient_address text,
    ADD CONSTRAINT invoices_seller_recorded CHECK (
        (seller_name IS NULL) = (seller_abn IS NULL)
        AND (seller_address IS NULL OR seller_name IS NOT NULL)
        AND char_length(seller_name) BETWEEN 1 AND 200
        AND seller_abn ~ '^[0-9]{11}$'
        AND char_length(seller_address) BETWEEN 1 AND 500),
    ADD CONSTRAINT invoices_recipient_recorded CHECK (
        (recipient_abn IS NULL AND recipient_address IS NULL OR recipient_name IS NOT NULL)
        AND char_length(recipient_name) BETWEEN 1 AND 200
        AND recipient_abn ~ '^[0-9]{11}$'
        AND char_length(recipient_address) BETWEEN 1 AND 500),
    -- Only an issued document (one with a number, void or not) has parties of its own.
    ADD CONSTRAINT invoices_parties_only_issued CHECK (
        number IS NOT NULL OR (seller_name IS NULL AND recipient_name IS NULL));

-- What a document recorded stays as recorded (a part not recorded yet may be filled in once),
-- and nothing is numbered, that is issued, without its recipient recorded in the same
-- statement. Generic over any table with a `number` and these six columns.
CREATE FUNCTION document_parties_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seller_name IS NOT NULL
       AND (NEW.seller_name, NEW.seller_abn, NEW.seller_address)
           IS DISTINCT FROM (OLD.seller_name, OLD.seller_abn, OLD.seller_address) THEN
        RAISE EXCEPTION '% % was issued by %: its supplier cannot change',
            TG_TABLE_NAME, OLD.id, OLD.seller_name USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.recipient_name IS NOT NULL
       AND (NEW.recipient_name, NEW.recipient_abn, NEW.recipient_address)
           IS DISTINCT FROM (OLD.recipient_name, OLD.recipient_abn, OLD.recipient_address) THEN
        RAISE EXCEPTION '% % was issued to %: its recipient cannot change',
            TG_TABLE_NAME, OLD.id, OLD.recipient_name USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.number IS NULL AND NEW.number IS NOT NULL AND NEW.recipient_name IS NULL THEN
        RAISE EXCEPTION '% % cannot be issued without its recipient recorded',
            TG_TABLE_NAME, OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_parties_guard
    BEFORE UPDATE OF number, seller_name, seller_abn, seller_address,
                     recipient_name, recipient_abn, recipient_address ON invoices
    FOR EACH ROW EXECUTE FUNCTION document_parties_guard();

-- The same for rows inserted already issued (a rollup's batch, a finalization): statement-level,
-- so a batch of thousands of invoices costs one scan of the rows it inserted, not a call each.
CREATE FUNCTION document_parties_insert_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad uuid;
BEGIN
    SELECT id INTO bad FROM new_documents
    WHERE number IS NOT NULL AND recipient_name IS NULL LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION '% % cannot be issued without its recipient recorded',
            TG_TABLE_NAME, bad USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER invoices_parties_insert_guard AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS new_documents
    FOR EACH STATEMENT EXECUTE FUNCTION document_parties_insert_guard();
