-- Events are numbered per job under the job's row lock (see the PostgreSQL migration: there it
-- fixes paging that could skip events; SQLite has one writer, and shares the code path).
ALTER TABLE jobs ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_events ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE job_events SET seq = n.rn
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY id) AS rn FROM job_events) AS n
WHERE job_events.id = n.id;
UPDATE jobs SET event_seq = COALESCE((SELECT MAX(seq) FROM job_events WHERE job_events.job_id = jobs.id), 0);
CREATE UNIQUE INDEX job_events_job_seq ON job_events (job_id, seq);
