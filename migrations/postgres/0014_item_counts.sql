-- A job's item counts by hub and state, kept by triggers in the same transaction as every item change
-- (issue 9), so the job view, the job list, /metrics and the settle sweep read a few rows instead of
-- counting a job's items. `hub` is '' for items whose record names none.
--
-- Each statement on job_items appends its net change as a few rows; the settle path folds a job's rows
-- into one per key (Store::fold_item_counts). Appending never waits for another transaction's counter
-- row: one shared row per key would serialise every completion of a job, and transactions that update
-- items of several hubs would deadlock on those rows taken in different orders.
CREATE TABLE job_item_counts (
    id     BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    hub    TEXT NOT NULL,
    state  TEXT NOT NULL,
    n      BIGINT NOT NULL
);
CREATE INDEX job_item_counts_job ON job_item_counts (job_id);

CREATE FUNCTION job_item_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_item_counts (job_id, hub, state, n)
    SELECT job_id, COALESCE(hub, ''), state, COUNT(*) FROM new_items GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

CREATE FUNCTION job_item_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Lease renewals and data-only updates net to zero and append nothing.
    INSERT INTO job_item_counts (job_id, hub, state, n)
    SELECT job_id, hub, state, SUM(n) FROM (
        SELECT job_id, COALESCE(hub, '') AS hub, state, 1 AS n FROM new_items
        UNION ALL
        SELECT job_id, COALESCE(hub, ''), state, -1 FROM old_items
    ) AS change
    GROUP BY 1, 2, 3 HAVING SUM(n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION job_item_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_item_counts (job_id, hub, state, n)
    SELECT job_id, COALESCE(hub, ''), state, -COUNT(*) FROM old_items GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_items_count_inserted AFTER INSERT ON job_items
    REFERENCING NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION job_item_counts_inserted();
CREATE TRIGGER job_items_count_updated AFTER UPDATE ON job_items
    REFERENCING OLD TABLE AS old_items NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION job_item_counts_updated();
CREATE TRIGGER job_items_count_deleted AFTER DELETE ON job_items
    REFERENCING OLD TABLE AS old_items
    FOR EACH STATEMENT EXECUTE FUNCTION job_item_counts_deleted();

-- Jobs recorded before this migration.
INSERT INTO job_item_counts (job_id, hub, state, n)
SELECT job_id, COALESCE(hub, ''), state, COUNT(*) FROM job_items GROUP BY 1, 2, 3;
