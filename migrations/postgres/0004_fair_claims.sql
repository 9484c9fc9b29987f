-- Claims read due items one job at a time (fair between jobs) and expired leases separately, each
-- an index range instead of a scan of every due item (see docs-notes/engine.md for the figures).
CREATE INDEX job_items_job_due ON job_items (job_id, state, next_run_at);
CREATE INDEX job_items_lease ON job_items (state, lease_expires_at);
CREATE INDEX jobs_lease ON jobs (lane_state, lease_expires_at);
