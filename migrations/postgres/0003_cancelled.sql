-- See migrations/0007_cancelled.sql.
ALTER TABLE backups DROP CONSTRAINT backups_status_check;
ALTER TABLE backups ADD CONSTRAINT backups_status_check
    CHECK (status IN ('running', 'complete', 'failed', 'cancelled'));
