-- shoal: no-transaction
-- Each retention batch is an index range scan on recorded_at; built without blocking the
-- commits that record successes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS successes_recorded_at ON shoal.successes (recorded_at);
