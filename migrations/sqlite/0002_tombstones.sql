-- Disabled individual enrollments created to block one device of a group. Deleting one lets the
-- device enroll again through its group, so the service records each and refuses to remove it.
CREATE TABLE tombstones (
    dps             TEXT NOT NULL,
    registration_id TEXT NOT NULL,
    group_id        TEXT NOT NULL,
    attestation     TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    audited_at      INTEGER,
    audit_status    TEXT,
    audit_detail    TEXT,
    PRIMARY KEY (dps, registration_id)
);
