-- PostgreSQL 15/16 incrementals: each physical backup's block map (the
-- 8-byte hash of every 8 KiB page of every relation file, little-endian),
-- one row per file, so the next incremental compares page by page without
-- the identity and without holding a whole cluster's map in memory.
CREATE TABLE block_maps (
    backup_id  TEXT NOT NULL,
    path       TEXT NOT NULL,
    hashes     BLOB NOT NULL,
    PRIMARY KEY (backup_id, path)
);
