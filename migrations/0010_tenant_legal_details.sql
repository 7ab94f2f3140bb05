-- Tax invoice documents (CONTRACT.md 5b): who a tenant is on its invoices. All optional (below
-- $1,000 the ATO asks for none of it); the application validates them, these checks are the
-- last line of defence. Nullable columns without defaults are added without a table rewrite.
ALTER TABLE tenants
    ADD COLUMN legal_name text CHECK (char_length(legal_name) BETWEEN 1 AND 200),
    ADD COLUMN abn        text CHECK (abn ~ '^[0-9]{11}$'),
    ADD COLUMN address    text CHECK (char_length(address) BETWEEN 1 AND 500);
