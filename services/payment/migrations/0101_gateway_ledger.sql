-- The simulated payment gateway's own memory. It models an external system, so it is not part of
-- the service's state: the service's transactions never touch it, and it is not rebuilt by replay.
-- One row per idempotency key: a charge or a refund, counting every call that reached the ledger
-- (simulated latency and outages strike before it), with its outcome once
-- the operation took effect (NULL while every attempt so far failed transiently).
CREATE TABLE gateway_ledger (
    idempotency_key  TEXT        PRIMARY KEY,
    operation        TEXT        NOT NULL CHECK (operation IN ('charge', 'refund')),
    amount_minor     BIGINT      NOT NULL,
    currency         TEXT        NOT NULL,
    -- For a refund: the reference of the charge it gives back.
    charge_reference TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 1,
    outcome          TEXT        CHECK (outcome IN ('captured', 'declined', 'refunded')),
    -- The gateway's id of the capture or refund once it took effect.
    reference        TEXT        UNIQUE,
    decline_reason   TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ
);
CREATE INDEX gateway_ledger_refunds_by_charge ON gateway_ledger (charge_reference) WHERE operation = 'refund';
