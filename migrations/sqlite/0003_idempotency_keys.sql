-- Idempotency-Key of job submissions, scoped to the submitting API key.
CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    -- SHA-256 (hex) of the canonical JSON of the request body.
    body_hash   TEXT NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
