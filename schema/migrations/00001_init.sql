-- +goose Up

-- Orders. amount_minor is in the currency's minor units (cents for USD); the API speaks
-- major units. version increases with every status change (optimistic concurrency).
CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  text        NOT NULL CHECK (customer_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    amount_minor bigint      NOT NULL CHECK (amount_minor > 0),
    currency     char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status       text        NOT NULL DEFAULT 'PENDING'
                             CHECK (status IN ('PENDING', 'PAID', 'PAYMENT_FAILED')),
    version      integer     NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id, id DESC);
CREATE INDEX orders_status_idx ON orders (status, id DESC);

-- Idempotency keys for POST /orders. The row is claimed and its response stored in the
-- same transaction as the order, so a key never points at a half-written order.
CREATE TABLE idempotency_keys (
    key           text        PRIMARY KEY,
    request_hash  bytea       NOT NULL,
    status_code   integer,
    response_body bytea,
    order_id      bigint      REFERENCES orders (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- The worker's inbox: a message id recorded here in the same transaction as its effect
-- makes a redelivery a no-op.
CREATE TABLE processed_messages (
    handler      text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handler, message_id)
);

-- The transactional outbox: watermill-sql's PostgreSQL schema for topic "outbox", created
-- here because watermill refuses to create tables inside a transaction. The relay reads it
-- in (transaction_id, offset) order, below the oldest running transaction, so a row
-- committed late is never skipped. One deviation: created_at is the insert's wall-clock
-- time with zone (watermill never reads it; the relay measures its lag from it).
CREATE TABLE watermill_outbox (
    "offset"       bigserial,
    uuid           varchar(36) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload        json        DEFAULT NULL,
    metadata       json        DEFAULT NULL,
    transaction_id xid8        NOT NULL,
    PRIMARY KEY (transaction_id, "offset")
);

CREATE TABLE watermill_offsets_outbox (
    consumer_group                varchar(255) NOT NULL,
    offset_acked                  bigint,
    last_processed_transaction_id xid8         NOT NULL,
    PRIMARY KEY (consumer_group)
);

-- Outbox rows the relay could not forward because their envelope does not decode: set
-- aside here (and counted) instead of blocking everything behind them.
CREATE TABLE outbox_dead_letters (
    transaction_id xid8        NOT NULL,
    "offset"       bigint      NOT NULL,
    uuid           text        NOT NULL,
    payload        text,
    reason         text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, "offset")
);

-- +goose Down
DROP TABLE outbox_dead_letters;
DROP TABLE watermill_offsets_outbox;
DROP TABLE watermill_outbox;
DROP TABLE processed_messages;
DROP TABLE idempotency_keys;
DROP TABLE orders;
