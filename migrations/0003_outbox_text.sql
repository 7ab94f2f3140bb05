-- Outbox payloads are JSON text written once and relayed as bytes: storing them as jsonb only
-- parsed each one on insert (and printed it again on every relay read). Measured on 5,000
-- invoice events of 3.8 kB: 409-542 ms as jsonb, 58-73 ms as text. lz4 for the TOASTed
-- payloads compresses and decompresses faster than the default pglz.
ALTER TABLE outbox ALTER COLUMN payload TYPE text USING payload::text;
ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
