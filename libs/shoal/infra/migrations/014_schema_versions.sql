ALTER TABLE shoal.events ADD COLUMN IF NOT EXISTS schema_version smallint NOT NULL DEFAULT 1;
