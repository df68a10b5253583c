-- Bookkeeping of a replay into this database (sagactl replay); empty in a live database.

-- The one replay that fills this database: which service, which filters, when it started and
-- finished. A second replay into the same database resumes this one.
CREATE TABLE replay_run (
    service      TEXT        PRIMARY KEY,
    until_millis BIGINT,
    order_id     UUID,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);

-- Per partition read: its first offset and the end offset taken when the replay started, and
-- where the replay goes on from.
CREATE TABLE replay_progress (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    low_offset  BIGINT  NOT NULL,
    next_offset BIGINT  NOT NULL,
    end_offset  BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Ids of the events of the service's own topic the replay applied: a record the relay published
-- twice (at-least-once) is applied once. Events of consumed topics go through the inbox instead.
CREATE TABLE replay_seen (
    event_id UUID PRIMARY KEY
);

-- Decisions the replay re-ran and no recorded event has confirmed yet.
CREATE TABLE replay_expected (
    order_id   UUID  NOT NULL,
    event_type TEXT  NOT NULL,
    event      JSONB NOT NULL,
    PRIMARY KEY (order_id, event_type)
);

-- What the replay found different from the record, or could not apply.
CREATE TABLE replay_findings (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT  NOT NULL CHECK (kind IN ('mismatch', 'unrecorded', 'not_applied', 'undecodable')),
    topic      TEXT  NOT NULL,
    partition  INTEGER NOT NULL,
    "offset"   BIGINT NOT NULL,
    order_id   UUID,
    event_type TEXT,
    recorded   JSONB,
    replayed   JSONB,
    detail     TEXT  NOT NULL
);
