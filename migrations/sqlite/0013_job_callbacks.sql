-- Completion callbacks a job carries: sent when the job reaches a final status. The sender finds them by
-- joining jobs (status and finished_at), so nothing in the engine writes here; a job retried and finished
-- again has a new finished_at, and gets a new round of attempts.
CREATE TABLE job_callbacks (
    job_id                TEXT NOT NULL REFERENCES jobs (id),
    -- 'http' (a signed POST to destination) or 'jira_comment' (a comment on issue destination).
    kind                  TEXT NOT NULL,
    destination           TEXT NOT NULL,
    -- The webhook source that registered it (its configuration says how to send).
    source                TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    -- The job finish the attempts below count for.
    round_finished_at     INTEGER,
    attempts              INTEGER NOT NULL DEFAULT 0,
    next_attempt_at       INTEGER NOT NULL DEFAULT 0,
    -- A sender holds the row until then (several replicas share the table).
    lease_until           INTEGER,
    -- The job finish last delivered.
    delivered_finished_at INTEGER,
    last_error            TEXT,
    PRIMARY KEY (job_id, kind)
);
