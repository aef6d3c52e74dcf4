-- Attention statistics: one row per run x site x step (x head with per-head recording).
CREATE TABLE attention_stats (
    job_id              TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    run                 TEXT NOT NULL,
    site                TEXT NOT NULL,
    kind                TEXT NOT NULL,
    step                INTEGER NOT NULL,
    timestep            DOUBLE PRECISION NOT NULL,
    -- NULL for summary records (all heads together).
    head                INTEGER,
    entropy             DOUBLE PRECISION NOT NULL,
    entropy_normalized  DOUBLE PRECISION NOT NULL,
    energy              DOUBLE PRECISION NOT NULL
);

CREATE INDEX attention_stats_job ON attention_stats (job_id, run, step);
