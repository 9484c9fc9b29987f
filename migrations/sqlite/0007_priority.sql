-- A request's priority (issue 9): claims give the devices of higher-priority jobs a larger share.
-- low = -1, normal = 0, high = 1.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
