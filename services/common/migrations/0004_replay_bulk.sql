-- Replay builds its state in memory and writes it in bulk. The own events an interrupted replay
-- took are known again from the scan of the service's own topics, so they need no table.
DROP TABLE replay_seen;

-- The secondary indexes of the rebuilt tables, dropped while a replay loads its rows and
-- created again when it finishes (from these definitions, also after an interruption).
CREATE TABLE replay_deferred_indexes (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL
);
