-- A job's item counts by hub and state, kept by triggers in the same transaction as every item change
-- (issue 9), so the job view, the job list, /metrics and the settle sweep read a few rows instead of
-- counting a job's items. `hub` is '' for items whose record names none.
--
-- SQLite has one writer at a time, so one row per key, updated in place, cannot contend; PostgreSQL
-- appends changes instead (its migration says why).
CREATE TABLE job_item_counts (
    job_id TEXT NOT NULL,
    hub    TEXT NOT NULL,
    state  TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (job_id, hub, state)
) WITHOUT ROWID;

CREATE TRIGGER job_items_count_inserted AFTER INSERT ON job_items BEGIN
    INSERT INTO job_item_counts (job_id, hub, state, n) VALUES (NEW.job_id, COALESCE(NEW.hub, ''), NEW.state, 1)
        ON CONFLICT (job_id, hub, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_items_count_updated AFTER UPDATE OF job_id, hub, state ON job_items
WHEN OLD.state IS NOT NEW.state OR OLD.hub IS NOT NEW.hub OR OLD.job_id IS NOT NEW.job_id BEGIN
    INSERT INTO job_item_counts (job_id, hub, state, n) VALUES (OLD.job_id, COALESCE(OLD.hub, ''), OLD.state, -1)
        ON CONFLICT (job_id, hub, state) DO UPDATE SET n = n - 1;
    INSERT INTO job_item_counts (job_id, hub, state, n) VALUES (NEW.job_id, COALESCE(NEW.hub, ''), NEW.state, 1)
        ON CONFLICT (job_id, hub, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_items_count_deleted AFTER DELETE ON job_items BEGIN
    INSERT INTO job_item_counts (job_id, hub, state, n) VALUES (OLD.job_id, COALESCE(OLD.hub, ''), OLD.state, -1)
        ON CONFLICT (job_id, hub, state) DO UPDATE SET n = n - 1;
END;

-- Jobs recorded before this migration.
INSERT INTO job_item_counts (job_id, hub, state, n)
SELECT job_id, COALESCE(hub, ''), state, COUNT(*) FROM job_items GROUP BY 1, 2, 3;
