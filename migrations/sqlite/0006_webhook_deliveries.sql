-- Webhooks: where a job's notifications go, and an outbox of deliveries written in the same
-- transaction as the status change they report, so a crash can delay a webhook but never lose it.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
-- JSON array of subscribed events ("start", "completed").
ALTER TABLE jobs ADD COLUMN webhook_events TEXT NOT NULL DEFAULT '[]';

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- The status event (job_events.seq) the delivery reports.
    event_seq        INTEGER NOT NULL,
    event            TEXT NOT NULL,
    url              TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Due time; while an attempt is in flight, the end of that attempt's claim.
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    abandoned_at     INTEGER,
    last_error       TEXT,
    UNIQUE (job_id, event_seq)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (delivered_at, abandoned_at, next_attempt_at);
