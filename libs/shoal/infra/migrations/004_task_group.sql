-- The worker group a task attempt was dispatched to, so a run can show tasks waiting for a
-- group with no live worker.
ALTER TABLE shoal_read.task_runs ADD COLUMN worker_group text;
