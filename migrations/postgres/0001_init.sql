-- The catalog in PostgreSQL (`--catalog postgres://…`), for many workers on
-- many hosts: the same tables as the SQLite catalog (migrations/*.sql, all
-- of them applied), integers as BIGINT, times as RFC 3339 text (they sort
-- as they compare, as in SQLite).
CREATE TABLE backups (
    id            TEXT PRIMARY KEY,
    policy        TEXT NOT NULL,
    method        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    consistent_at TEXT,
    stored_bytes  BIGINT,
    source_bytes  BIGINT,
    repository    TEXT,
    error         TEXT,
    pinned        BIGINT NOT NULL DEFAULT 0,
    manifest      TEXT,
    host          TEXT,
    pid           BIGINT,
    kind          TEXT NOT NULL DEFAULT 'full',
    parent        TEXT
);
CREATE INDEX backups_policy_started ON backups (policy, started_at);

CREATE TABLE verifications (
    backup_id  TEXT NOT NULL,
    at         TEXT NOT NULL,
    deep       BIGINT NOT NULL,
    ok         BIGINT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX verifications_backup ON verifications (backup_id, at);

CREATE TABLE drills (
    id           TEXT PRIMARY KEY,
    policy       TEXT NOT NULL,
    backup_id    TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT NOT NULL,
    passed       BIGINT NOT NULL,
    rto_seconds  DOUBLE PRECISION,
    rpo_seconds  DOUBLE PRECISION,
    report       TEXT NOT NULL
);
CREATE INDEX drills_policy_started ON drills (policy, started_at);

CREATE TABLE backup_copies (
    backup_id  TEXT NOT NULL,
    policy     TEXT NOT NULL,
    copy       TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (backup_id, copy)
);
CREATE INDEX backup_copies_policy ON backup_copies (policy, copy);

CREATE TABLE server_manifests (
    backup_id  TEXT PRIMARY KEY,
    body       BYTEA NOT NULL
);

CREATE TABLE block_maps (
    backup_id  TEXT NOT NULL,
    path       TEXT NOT NULL,
    hashes     BYTEA NOT NULL,
    PRIMARY KEY (backup_id, path)
);
