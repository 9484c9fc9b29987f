-- Issue 13: the indexes that find work hold only the unfinished items they are asked for. A finished device
-- leaves them, so finishing one (the import path finishes 100,000 in a few statements) adds entries to the
-- three unique indexes alone instead of eight; `job_items_job_state` was a prefix of `job_items_job_due`.
--
-- due: a job's pending items by due time (the claim, the queue-depth metric).
-- leased: running items by lease expiry (expired leases are claimed again, settled on a cancel).
-- open: a job's unfinished items (the settle check, the barrier, cancel, failing a job).
-- unfinished_device: a job's unfinished devices by hub and device id, as the job path looks them up (its
-- statements say `finished_at IS NULL` and test `state` in a form no index serves, so that no state index
-- is picked over this one however stale the planner's statistics).
DROP INDEX job_items_claim;
DROP INDEX job_items_job_state;
DROP INDEX job_items_job_due;
DROP INDEX job_items_lease;
DROP INDEX job_items_job_hub_device;
CREATE INDEX job_items_due ON job_items (job_id, next_run_at) WHERE state = 'pending';
CREATE INDEX job_items_leased ON job_items (lease_expires_at) WHERE state = 'running';
CREATE INDEX job_items_open ON job_items (job_id, state) WHERE state IN ('waiting', 'pending', 'running');
CREATE INDEX job_items_unfinished_device ON job_items (job_id, hub, device_id) WHERE finished_at IS NULL;
