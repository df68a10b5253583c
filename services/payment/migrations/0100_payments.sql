-- One payment per order: captured, declined, or refunded after its order failed.
CREATE TABLE payments (
    order_id          UUID        PRIMARY KEY,
    payment_id        UUID        NOT NULL UNIQUE,
    status            TEXT        NOT NULL CHECK (status IN ('captured', 'declined', 'refunded')),
    amount_minor      BIGINT      NOT NULL CHECK (amount_minor >= 0),
    currency          TEXT        NOT NULL,
    refunded_minor    BIGINT      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    -- The gateway's id of the capture; what a refund names. NULL for a declined payment.
    gateway_reference TEXT,
    decline_reason    TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'declined') = (decline_reason IS NOT NULL)),
    CHECK (status = 'declined' OR gateway_reference IS NOT NULL)
);

-- Orders known to have failed, with the order service's reason. An order.created seen after its
-- order already failed (only possible through redelivery anomalies) is not charged.
CREATE TABLE failed_orders (
    order_id  UUID        PRIMARY KEY,
    reason    TEXT        NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
