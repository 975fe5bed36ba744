-- Durable timers (retry interval, delayed start, task and workflow timeouts). Rows are
-- written in the same transaction as the TimerArmed / TimerCancelled events that own
-- them; any orchestrator may fire a due row: firing only publishes a FireTimer command to
-- the instance's partition, where its owner applies it in order.
CREATE TABLE shoal.timers (
    instance_id uuid        NOT NULL,
    timer_id    text        NOT NULL,
    fire_at     timestamptz NOT NULL,
    PRIMARY KEY (instance_id, timer_id)
);
CREATE INDEX timers_due ON shoal.timers (fire_at);
