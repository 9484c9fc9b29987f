-- Jobs, their device items and the append-only event timeline.
-- Times are milliseconds since the Unix epoch (BIGINT) so that both stores share one code path.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    dps              TEXT NOT NULL,
    target_kind      TEXT NOT NULL,
    target_id        TEXT NOT NULL,
    target_key       TEXT NOT NULL,
    request_json     TEXT NOT NULL,
    requested_by     TEXT,
    reason_code      TEXT NOT NULL,
    reason_text      TEXT,
    ticket_system    TEXT,
    ticket_key       TEXT,
    ticket_url       TEXT,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    status           TEXT NOT NULL,
    -- dps + '/' + target_key while the job is queued or running, NULL otherwise: one active job per target.
    active_key       TEXT UNIQUE,
    plan_json        TEXT NOT NULL,
    context_json     TEXT,
    step_index       BIGINT NOT NULL DEFAULT 0,
    lane_state       TEXT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    fence            BIGINT NOT NULL DEFAULT 0,
    next_run_at      BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    cursor           TEXT,
    last_error       TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX jobs_claim ON jobs (lane_state, next_run_at);
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_target ON jobs (target_id);
CREATE INDEX jobs_ticket ON jobs (ticket_key);
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE job_items (
    id               TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    seq              BIGINT NOT NULL,
    registration_id  TEXT NOT NULL,
    device_id        TEXT,
    hub              TEXT,
    data_json        TEXT,
    step_index       BIGINT NOT NULL DEFAULT 0,
    state            TEXT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    fence            BIGINT NOT NULL DEFAULT 0,
    next_run_at      BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    skip_reason      TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    UNIQUE (job_id, seq),
    UNIQUE (job_id, registration_id)
);
CREATE INDEX job_items_claim ON job_items (state, next_run_at);
CREATE INDEX job_items_job_state ON job_items (job_id, state);

CREATE TABLE job_events (
    id          BIGSERIAL PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    item_id     TEXT,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    step        TEXT,
    attempt     BIGINT,
    message     TEXT,
    detail_json TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, id);
