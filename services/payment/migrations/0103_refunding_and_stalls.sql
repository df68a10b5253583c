-- One state machine, one refund path: order.failed no longer refunds a capture itself, it moves
-- the payment to `refunding`, and the charger gives the capture back (as it already did for a
-- capture that completed after the order failed) and records it `refunded`. So the consumer never
-- waits for the gateway, and a payment waiting for it is `pending` (a charge) or `refunding`.
--
-- The checks replaced here were named by 0102.
ALTER TABLE payments
    DROP CONSTRAINT payments_status_check,
    DROP CONSTRAINT payments_capture_has_reference,
    ADD CONSTRAINT payments_status_check
        CHECK (status IN ('pending', 'captured', 'declined', 'refunding', 'refunded')),
    -- Captured, refunding and refunded payments name their capture; pending and declined ones
    -- have none.
    ADD CONSTRAINT payments_capture_has_reference
        CHECK (status IN ('pending', 'declined') OR gateway_reference IS NOT NULL),
    -- Why the charger gave up on this payment (the gateway refused the call, or its outcome
    -- cannot be recorded), and when: it stays as it is for an operator, and is tried again only
    -- now and then. Cleared when the payment changes.
    ADD COLUMN stalled_reason TEXT,
    ADD COLUMN stalled_at TIMESTAMPTZ,
    ADD CONSTRAINT payments_stall_has_time CHECK ((stalled_reason IS NULL) = (stalled_at IS NULL));

-- The charger's scans look for payments waiting for the gateway, oldest first.
DROP INDEX payments_pending_by_age;
CREATE INDEX payments_awaiting_gateway_by_age ON payments (created_at) WHERE status IN ('pending', 'refunding');
