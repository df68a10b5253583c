-- Reliability machinery shared by every service (versions 1-99 belong to the shared library;
-- each service numbers its own migrations from 100).

-- Transactional outbox: a state change and the events it causes commit together; the relay
-- publishes rows in position order and deletes them once the broker acknowledged them, so the
-- table holds exactly the events not yet published.
CREATE TABLE outbox (
    position      BIGSERIAL PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    event_type    TEXT        NOT NULL,
    partition_key TEXT        NOT NULL,
    payload       JSONB       NOT NULL,
    traceparent   TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Inbox: every consumed event's id, recorded in the same transaction as its effect, so a
-- redelivered event is recognised and changes nothing.
CREATE TABLE inbox (
    event_id         UUID        PRIMARY KEY,
    event_type       TEXT        NOT NULL,
    source_topic     TEXT        NOT NULL,
    source_partition INTEGER     NOT NULL,
    source_offset    BIGINT      NOT NULL,
    processed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
