ALTER TABLE shoal.events ADD COLUMN IF NOT EXISTS schema_version smallint NOT NULL DEFAULT 1;
-- The version of each event's data shape (shoal.core.versions). Releases before versioning
-- write no version, so the default 1 is exactly right for the rows they keep appending
-- during a rolling upgrade. A constant default adds the column without rewriting the
-- table (PostgreSQL 11 and later): an instant catalog change on a log of any size.
ALTER TABLE shoal.imported_events ADD COLUMN IF NOT EXISTS schema_version smallint NOT NULL DEFAULT 1;
