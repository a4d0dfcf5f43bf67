-- Where each backup lives besides the primary repository: one row per
-- backup and [[copy]] once that copy committed the backup's manifest.
CREATE TABLE backup_copies (
    backup_id  TEXT NOT NULL,
    policy     TEXT NOT NULL,
    copy       TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (backup_id, copy)
);
CREATE INDEX backup_copies_policy ON backup_copies (policy, copy);
