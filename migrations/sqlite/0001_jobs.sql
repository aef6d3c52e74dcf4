-- Jobs: one row per accepted request. Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY NOT NULL,
    -- SHA-256 (hex) of the API key that submitted the job; '' when authentication is off.
    owner             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    model             TEXT NOT NULL,
    status            TEXT NOT NULL,
    -- The validated request with defaults filled in (JSON), as echoed under `request`.
    request           TEXT NOT NULL,
    progress          TEXT NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    -- JSON array of artifact names written for the job.
    outputs           TEXT NOT NULL DEFAULT '[]',
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    -- Claim order: first come, first served; kept when a job is re-queued.
    queue_order       INTEGER NOT NULL UNIQUE
);

CREATE INDEX jobs_claim ON jobs (status, queue_order);
CREATE INDEX jobs_owner_order ON jobs (owner, queue_order);
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
