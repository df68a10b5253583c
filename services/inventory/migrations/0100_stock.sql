-- Stock per SKU. Conservation: sum of adjustments = available + reserved + committed.
CREATE TABLE stock (
    sku       TEXT   PRIMARY KEY,
    available BIGINT NOT NULL DEFAULT 0 CHECK (available >= 0),
    reserved  BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    committed BIGINT NOT NULL DEFAULT 0 CHECK (committed >= 0)
);

-- One reservation decision per order, all lines or none.
CREATE TABLE reservations (
    order_id   UUID        PRIMARY KEY,
    status     TEXT        NOT NULL CHECK (status IN ('reserved', 'rejected', 'committed', 'released')),
    items      JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Operator adjustments (restock, count corrections), each also an inventory.stock_adjusted event.
CREATE TABLE stock_adjustments (
    adjustment_id UUID        PRIMARY KEY,
    sku           TEXT        NOT NULL,
    delta         BIGINT      NOT NULL,
    reason        TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
