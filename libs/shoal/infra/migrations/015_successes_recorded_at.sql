-- Retention deletes a success by when it was recorded, not by its business time: a
-- backfill of a date years back records successes that dependent tasks of that date are
-- about to wait for, and pruning by business time removed them at once. now() is stable,
-- so the default is stored once in the catalog (no table rewrite); rows already here count
-- as recorded at the upgrade and are kept a whole retention period from then.
ALTER TABLE shoal.successes ADD COLUMN IF NOT EXISTS recorded_at timestamptz NOT NULL DEFAULT now();
