-- See migrations/0008_restore_points.sql.
CREATE TABLE restore_points (
    policy   TEXT NOT NULL,
    name     TEXT NOT NULL,
    lsn      TEXT NOT NULL,
    at       TEXT NOT NULL,
    host     TEXT NOT NULL,
    PRIMARY KEY (policy, name, lsn)
);
