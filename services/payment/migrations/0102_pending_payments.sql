-- Charging moves out of the consumer: order.created records a `pending` payment holding what the
-- charge needs, and the charger settles it (captured, declined, or captured and refunded when the
-- order failed meanwhile) in its own transaction once the gateway answered.
--
-- 0100 created the status and reference checks without names; PostgreSQL named them
-- payments_status_check and payments_check2 (deterministically, from the same DDL). They are
-- dropped by those names on purpose, without IF EXISTS: a database where they are named otherwise
-- fails this migration (atomically) instead of silently keeping a check that forbids `pending`.
ALTER TABLE payments
    DROP CONSTRAINT payments_status_check,
    DROP CONSTRAINT payments_check2,
    -- The customer's payment token, kept only while the charge is pending (cleared on settling).
    ADD COLUMN payment_token TEXT,
    -- The order.created event that asked for the charge: the causation of payment.success /
    -- payment.failed. NULL on payments settled before this migration.
    ADD COLUMN causation_id UUID,
    -- W3C trace context of that order.created, continued by the events the charger writes.
    ADD COLUMN traceparent TEXT,
    ADD CONSTRAINT payments_status_check
        CHECK (status IN ('pending', 'captured', 'declined', 'refunded')),
    -- Captured and refunded payments name their capture; pending and declined ones have none.
    ADD CONSTRAINT payments_capture_has_reference
        CHECK (status IN ('pending', 'declined') OR gateway_reference IS NOT NULL),
    -- A pending payment holds everything needed to charge it again after a crash.
    ADD CONSTRAINT payments_pending_has_charge_request
        CHECK (status <> 'pending' OR (payment_token IS NOT NULL AND causation_id IS NOT NULL));

-- The charger's startup and periodic scans look for pending payments, oldest first.
CREATE INDEX payments_pending_by_age ON payments (created_at) WHERE status = 'pending';

-- The order.failed event that failed the order (the first one seen): the causation of the
-- payment.refunded the charger writes when a capture completes after the order failed.
-- NULL for orders recorded before this migration.
ALTER TABLE failed_orders ADD COLUMN event_id UUID;
