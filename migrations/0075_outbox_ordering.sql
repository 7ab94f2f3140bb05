-- The events of one invoice are published in the order they happened (CONTRACT.md 8, v3). A
-- row's own retry delay, or several relays claiming at once, let a `<id>:paid` or `<id>:voided`
-- overtake an `<id>:issued` that was waiting for its next attempt. Events now carry the
-- aggregate they belong to (`invoice:<id>`; a later adjustment note of the invoice takes the
-- invoice's key, a credit grant would take `credit:<grant id>`), and the relay never claims an
-- event while an earlier event of the same key is unpublished, parked or backing off included
-- (`store::outbox::claim`). Events without a key (rollup completed, usage late) are claimed as
-- before. Keys are ASCII identifiers compared byte by byte ("C"), whatever the database's
-- collation: the claim compares them once per row it considers.
ALTER TABLE outbox ADD COLUMN ordering_key text COLLATE "C";

-- Upgrading with a backlog: unpublished invoice events written before this migration are kept
-- in order too (their msg id is `<invoice id>:<status>`).
UPDATE outbox SET ordering_key = 'invoice:' || split_part(msg_id, ':', 1)
WHERE published_at IS NULL AND subject LIKE 'billing.invoice.%';

-- The claim's probe for an earlier unpublished event of the same key: one index lookup per
-- keyed row it considers. Partial, so it holds only the backlog, whatever the retention.
CREATE INDEX outbox_unpublished_by_key ON outbox (ordering_key, id)
    WHERE published_at IS NULL AND ordering_key IS NOT NULL;
