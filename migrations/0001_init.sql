-- Backups: one row per attempt. A cache of the repository plus run history.
CREATE TABLE backups (
    id            TEXT PRIMARY KEY,
    policy        TEXT NOT NULL,
    method        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    consistent_at TEXT,
    stored_bytes  INTEGER,
    source_bytes  INTEGER,
    repository    TEXT,
    error         TEXT,
    pinned        INTEGER NOT NULL DEFAULT 0,
    manifest      TEXT,
    host          TEXT,
    pid           INTEGER
);
CREATE INDEX backups_policy_started ON backups (policy, started_at);

CREATE TABLE verifications (
    backup_id  TEXT NOT NULL,
    at         TEXT NOT NULL,
    deep       INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX verifications_backup ON verifications (backup_id, at);
