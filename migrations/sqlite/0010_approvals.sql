-- Two-person rule: a job a policy holds waits in status 'awaiting_approval' until an admin other than its
-- requester approves or rejects it, or it expires. jobs.requested_by now holds the authenticated principal
-- (key:NAME, oidc:NAME, webhook:SOURCE, anonymous); the request's own requested_by stays in request_json.
ALTER TABLE jobs ADD COLUMN approval_rule TEXT;
ALTER TABLE jobs ADD COLUMN approval_expires_at INTEGER;
ALTER TABLE jobs ADD COLUMN decided_by TEXT;
ALTER TABLE jobs ADD COLUMN decided_at INTEGER;
CREATE INDEX jobs_awaiting ON jobs (status, approval_expires_at);
