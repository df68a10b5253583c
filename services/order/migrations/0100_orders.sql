-- Orders and their saga state. The order service is the only one that decides an order's fate.
CREATE TABLE orders (
    order_id          UUID        PRIMARY KEY,
    customer_id       TEXT        NOT NULL,
    customer_email    TEXT        NOT NULL,
    currency          TEXT        NOT NULL,
    total_minor       BIGINT      NOT NULL CHECK (total_minor >= 0),
    payment_token     TEXT        NOT NULL,
    items             JSONB       NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'FAILED')),
    failure_reason    TEXT,
    -- what each participant reported so far: NULL until it reports
    payment_outcome   TEXT        CHECK (payment_outcome IN ('captured', 'declined')),
    inventory_outcome TEXT        CHECK (inventory_outcome IN ('reserved', 'unavailable')),
    deadline_at       TIMESTAMPTZ NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at        TIMESTAMPTZ
);
CREATE INDEX orders_pending_deadline ON orders (deadline_at) WHERE status = 'PENDING';

-- Every event of an order, emitted or received, for GET /orders/{id}.
CREATE TABLE order_timeline (
    event_id    UUID        PRIMARY KEY,
    order_id    UUID        NOT NULL REFERENCES orders (order_id),
    event_type  TEXT        NOT NULL,
    source      TEXT        NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_timeline_by_order ON order_timeline (order_id, occurred_at);

-- Idempotency-Key of POST /orders: a retried request returns the first answer.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT        PRIMARY KEY,
    request_hash    TEXT        NOT NULL,
    order_id        UUID        NOT NULL REFERENCES orders (order_id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
