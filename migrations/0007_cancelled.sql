-- A run stopped by a signal is `cancelled`, not `failed`: it is not counted
-- as a failure (FAILURES, drctl_backup_failures_total) and notifies as what
-- it is. SQLite cannot alter a CHECK constraint: the table is rebuilt.
CREATE TABLE backups_new (
    id            TEXT PRIMARY KEY,
    policy        TEXT NOT NULL,
    method        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'cancelled')),
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
    pid           INTEGER,
    kind          TEXT NOT NULL DEFAULT 'full',
    parent        TEXT
);
INSERT INTO backups_new (id, policy, method, status, started_at, finished_at, consistent_at,
                         stored_bytes, source_bytes, repository, error, pinned, manifest, host,
                         pid, kind, parent)
SELECT id, policy, method, status, started_at, finished_at, consistent_at,
       stored_bytes, source_bytes, repository, error, pinned, manifest, host,
       pid, kind, parent
FROM backups;
DROP TABLE backups;
ALTER TABLE backups_new RENAME TO backups;
CREATE INDEX backups_policy_started ON backups (policy, started_at);
