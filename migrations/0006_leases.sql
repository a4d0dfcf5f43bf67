-- The leases runs hold in their S3 repository (repo::lease), as last
-- written by their holders: `status` shows which run holds each policy
-- without asking the repository. One row per policy and lease object
-- ("run" or "drill"); a holder that died leaves its row, past `expires`.
CREATE TABLE leases (
    policy   TEXT NOT NULL,
    lease    TEXT NOT NULL,
    token    TEXT NOT NULL,
    what     TEXT NOT NULL,
    host     TEXT NOT NULL,
    pid      INTEGER NOT NULL,
    started  TEXT NOT NULL,
    expires  TEXT NOT NULL,
    PRIMARY KEY (policy, lease)
);
