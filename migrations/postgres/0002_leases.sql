-- See migrations/0006_leases.sql.
CREATE TABLE leases (
    policy   TEXT NOT NULL,
    lease    TEXT NOT NULL,
    token    TEXT NOT NULL,
    what     TEXT NOT NULL,
    host     TEXT NOT NULL,
    pid      BIGINT NOT NULL,
    started  TEXT NOT NULL,
    expires  TEXT NOT NULL,
    PRIMARY KEY (policy, lease)
);
