-- Pacing (issue 9). A throttled lane keeps the time its 429s began: throttling is bounded by a
-- patience in time, not by the attempt count. Pacing buckets are shared by replicas (PostgreSQL):
-- one row per hub or DPS instance, tokens taken in small batches under the database's clock.
ALTER TABLE jobs ADD COLUMN throttled_since BIGINT;
ALTER TABLE job_items ADD COLUMN throttled_since BIGINT;
CREATE TABLE pacing_buckets (
    bucket_key    TEXT PRIMARY KEY,
    tokens        REAL NOT NULL,
    rate          REAL NOT NULL,
    updated_at    BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL
);
