-- +goose Up

-- The payment provider's idempotency key of each order: "order-<id>-<payment_key>". The
-- order id alone is unique only within this database's sequence: after a point-in-time
-- restore (ids reused), a reset database with the provider's ledger kept, or two
-- environments sharing a provider, a new order would be "paid" by another order's old
-- charge. Orders created before this column keep NULL, and with it the key they may
-- already have been charged under, "order-<id>", so the upgrade charges none twice.
ALTER TABLE orders ADD COLUMN payment_key uuid;
ALTER TABLE orders ALTER COLUMN payment_key SET DEFAULT gen_random_uuid();

-- The inbox is keyed by the order a message acts on as well as the message id: a record
-- reusing another event's id (or a foreign producer's) must not pass for a redelivery.
-- Entries from before keep order 0: no message acts on order 0, and a redelivery of a
-- message recorded then finds its order already final.
ALTER TABLE processed_messages ADD COLUMN order_id bigint NOT NULL DEFAULT 0;
ALTER TABLE processed_messages ALTER COLUMN order_id DROP DEFAULT;
ALTER TABLE processed_messages DROP CONSTRAINT processed_messages_pkey,
    ADD PRIMARY KEY (handler, order_id, message_id);
-- The worker deletes entries past WORKER_INBOX_RETENTION, oldest first.
CREATE INDEX processed_messages_processed_at_idx ON processed_messages (processed_at);

-- +goose Down
DROP INDEX processed_messages_processed_at_idx;
ALTER TABLE processed_messages DROP CONSTRAINT processed_messages_pkey;
DELETE FROM processed_messages a USING processed_messages b
    WHERE a.handler = b.handler AND a.message_id = b.message_id AND a.order_id > b.order_id;
ALTER TABLE processed_messages DROP COLUMN order_id, ADD PRIMARY KEY (handler, message_id);
ALTER TABLE orders DROP COLUMN payment_key;
