-- Drills: one row per restore drill, with its measurements and report.
CREATE TABLE drills (
    id           TEXT PRIMARY KEY,
    policy       TEXT NOT NULL,
    backup_id    TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT NOT NULL,
    passed       INTEGER NOT NULL,
    rto_seconds  REAL,
    rpo_seconds  REAL,
    report       TEXT NOT NULL
);
CREATE INDEX drills_policy_started ON drills (policy, started_at);
