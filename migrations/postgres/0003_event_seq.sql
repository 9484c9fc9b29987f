-- Events are numbered per job under the job's row lock, so their numbers become visible in commit
-- order: paging by `seq` cannot skip an event whose transaction committed after a later-numbered one
-- (which BIGSERIAL ids, allocated before commit, allowed).
ALTER TABLE jobs ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE job_events ADD COLUMN seq BIGINT;
UPDATE job_events SET seq = n.rn
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY id) AS rn FROM job_events) AS n
WHERE job_events.id = n.id;
UPDATE jobs SET event_seq = COALESCE((SELECT MAX(seq) FROM job_events WHERE job_events.job_id = jobs.id), 0);
ALTER TABLE job_events ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX job_events_job_seq ON job_events (job_id, seq);
