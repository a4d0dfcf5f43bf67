-- Incremental physical backups: each row says its kind and parent, and the
-- server's backup_manifest of every physical backup drctl may build an
-- incremental on is kept here (zstd), so an incremental never needs the
-- identity to read it back from the encrypted repository.
ALTER TABLE backups ADD COLUMN kind TEXT NOT NULL DEFAULT 'full';
ALTER TABLE backups ADD COLUMN parent TEXT;
CREATE TABLE server_manifests (
    backup_id  TEXT PRIMARY KEY,
    body       BLOB NOT NULL
);
