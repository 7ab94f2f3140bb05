-- An issued invoice's event is written before the invoice number is allocated (so the counter
-- row, which every issuing transaction shares, is held only while the invoice rows themselves
-- are inserted). `number_of` names the invoice whose number the relay puts into the payload
-- when it publishes; the number is fixed once issued, so the event is the same either way.
ALTER TABLE outbox ADD COLUMN number_of uuid;
