-- One email per order outcome. The handler commits the row (the intent) together with the inbox
-- record; the mailer sends it afterwards and marks it sent. A crash between the SMTP server
-- accepting the mail and the row being marked sent resends it with the same deterministic
-- Message-ID, which receivers deduplicate on (docs/notification.md).
CREATE TABLE notifications (
    order_id        UUID        NOT NULL,
    outcome         TEXT        NOT NULL CHECK (outcome IN ('confirmed', 'failed')),
    recipient       TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    message_id      TEXT        NOT NULL UNIQUE,
    status          TEXT        NOT NULL CHECK (status IN ('pending', 'sent')),
    -- SMTP attempts so far, successful or not.
    attempts        INTEGER     NOT NULL DEFAULT 0,
    -- The event that asked for this email (order.confirmed or order.failed).
    source_event_id UUID        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the mailer may try again (backoff after a failed attempt).
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Why the last attempt failed, for operators.
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,
    PRIMARY KEY (order_id, outcome),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);

-- The mailer's work queue: pending rows by due time.
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
