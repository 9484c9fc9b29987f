-- A tombstone is recorded as `pending` before its blocking enrollment is created, and becomes `active`
-- once the disabled enrollment is verified. A crash in between leaves a pending tombstone, which still
-- refuses any delete of that registration id and is reported by the audit: the block is never
-- unprotected. Rows written before this migration were recorded after creation: `active`.
ALTER TABLE tombstones ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
