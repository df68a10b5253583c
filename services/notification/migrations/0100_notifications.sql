-- One email per order outcome. The row (the intent) is committed before the email is sent, so
-- a crash between sending and recording is retried with the same deterministic Message-ID.
CREATE TABLE notifications (
    order_id   UUID        NOT NULL,
    outcome    TEXT        NOT NULL CHECK (outcome IN ('confirmed', 'failed')),
    recipient  TEXT        NOT NULL,
    subject    TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    message_id TEXT        NOT NULL UNIQUE,
    status     TEXT        NOT NULL CHECK (status IN ('pending', 'sent')),
    attempts   INTEGER     NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at    TIMESTAMPTZ,
    PRIMARY KEY (order_id, outcome)
);
