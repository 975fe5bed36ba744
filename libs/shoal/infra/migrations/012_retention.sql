-- Retention (SHOAL_RETENTION_DAYS): old done-markers and successes are deleted in small
-- batches; these indexes keep each batch an index range scan.
CREATE INDEX IF NOT EXISTS processed_messages_processed_at
    ON shoal.processed_messages (processed_at);
CREATE INDEX IF NOT EXISTS successes_business_time ON shoal.successes (business_time);
