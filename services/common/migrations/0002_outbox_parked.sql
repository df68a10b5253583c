-- Outbox rows the relay could not publish and retrying cannot fix (an event that cannot be
-- encoded, a record the broker refuses). They are set aside here, with the reason, so the rows
-- behind them still publish; an operator lists them and redrives them (sagactl outbox) once the
-- cause is fixed, which moves them back to the end of the outbox.
CREATE TABLE outbox_parked (
    event_id      UUID        PRIMARY KEY,
    position      BIGINT      NOT NULL,
    event_type    TEXT        NOT NULL,
    partition_key TEXT        NOT NULL,
    payload       JSONB       NOT NULL,
    traceparent   TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    parked_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason        TEXT        NOT NULL
);
