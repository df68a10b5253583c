-- Stock per SKU. Conservation: sum of adjustments = available + reserved + committed.
-- Every transaction that changes several rows locks them first in sku order
-- (SELECT ... ORDER BY sku FOR UPDATE), so concurrent orders never deadlock and never oversell;
-- the CHECK constraints are the last line of defence.
CREATE TABLE stock (
    sku       TEXT   PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    available BIGINT NOT NULL DEFAULT 0 CHECK (available >= 0),
    reserved  BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    committed BIGINT NOT NULL DEFAULT 0 CHECK (committed >= 0)
);

-- One reservation decision per order, all lines or none. `items` is the list of
-- {"sku", "quantity"} held for the order (quantities summed per SKU). A row with status
-- 'released' and no `created_event_id` is a tombstone: the order failed before its
-- order.created was seen, so a later order.created reserves nothing.
CREATE TABLE reservations (
    order_id         UUID        PRIMARY KEY,
    status           TEXT        NOT NULL CHECK (status IN ('reserved', 'rejected', 'committed', 'released')),
    items            JSONB       NOT NULL,
    -- The order.created event that decided this reservation; NULL for a tombstone.
    created_event_id UUID,
    -- Why the reservation was rejected or released.
    reason           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Operator adjustments (restock, count corrections), each also an inventory.stock_adjusted event.
-- The stock levels right after the adjustment are kept so a retried request gets the same answer.
CREATE TABLE stock_adjustments (
    adjustment_id   UUID        PRIMARY KEY,
    sku             TEXT        NOT NULL,
    delta           BIGINT      NOT NULL CHECK (delta <> 0),
    reason          TEXT        NOT NULL CHECK (reason <> ''),
    event_id        UUID        NOT NULL UNIQUE,
    available_after BIGINT      NOT NULL,
    reserved_after  BIGINT      NOT NULL,
    committed_after BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stock_adjustments_by_sku ON stock_adjustments (sku);
