-- The size in bytes of each resource's last stored upstream body (additive: a nullable
-- column; releases before it neither read nor write it). NULL for a row stored before this
-- migration. A release from before it that stores a new body on this database (a rollback)
-- leaves the value of the body before: the next refresh by this release sets it again.

ALTER TABLE upstream_resources ADD COLUMN body_bytes bigint CHECK (body_bytes >= 0);
