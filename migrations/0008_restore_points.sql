-- Restore points `drctl restore-point` created (pg_create_restore_point):
-- `restore --to-name` picks the newest backup that ends before one, and
-- `list` shows them.
CREATE TABLE restore_points (
    policy   TEXT NOT NULL,
    name     TEXT NOT NULL,
    lsn      TEXT NOT NULL,
    at       TEXT NOT NULL,
    host     TEXT NOT NULL,
    PRIMARY KEY (policy, name, lsn)
);
