-- One payment per order: captured, declined, or refunded after its order failed.
CREATE TABLE payments (
    order_id       UUID        PRIMARY KEY,
    payment_id     UUID        NOT NULL UNIQUE,
    status         TEXT        NOT NULL CHECK (status IN ('captured', 'declined', 'refunded')),
    amount_minor   BIGINT      NOT NULL CHECK (amount_minor >= 0),
    currency       TEXT        NOT NULL,
    refunded_minor BIGINT      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    decline_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Orders already known to have failed, so a charge that arrives later is refunded at once.
CREATE TABLE failed_orders (
    order_id  UUID        PRIMARY KEY,
    reason    TEXT        NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
