-- Issue 13: devices handled by a hub's import job instead of their own registry step, and undo jobs.
--
-- hub_job: the import job that wrote (or verified) the device; cleared when the device falls back to its
-- own registry step. changed: 1 when this job changed the identity (disabled an enabled one, deleted
-- one), 0 when it found it already so; an undo reverts only what its job changed.
ALTER TABLE job_items ADD COLUMN hub_job TEXT;
ALTER TABLE job_items ADD COLUMN changed BIGINT;
-- The job path looks devices of a job up by hub and device id, a batch of export lines at a time.
CREATE INDEX job_items_job_hub_device ON job_items (job_id, hub, device_id);

-- The job an undo job undoes.
ALTER TABLE jobs ADD COLUMN undo_of TEXT;
CREATE INDEX jobs_undo_of ON jobs (undo_of) WHERE undo_of IS NOT NULL;
