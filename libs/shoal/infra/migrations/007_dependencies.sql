-- dependent tasks: what waits, and what succeeded. Both are written by the orchestrator
-- in the same transaction as the events that cause them, after the event-table lock, so
-- a wait registered and a success recorded by two orchestrators always meet: whichever
-- commits second sees the other's row (see shoal.infra.store.commit).
CREATE TABLE shoal.dependent_waits (
    dispatch_id   uuid PRIMARY KEY,
    instance_id   uuid      NOT NULL,
    task          text      NOT NULL,
    attempt       integer   NOT NULL,
    workflow      text      NOT NULL,       -- the upstream workflow
    upstream_task text      NOT NULL,       -- '' = the whole run
    window_start  timestamp NOT NULL,       -- business time window, wall-clock
    window_end    timestamp NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dependent_waits_by_upstream ON shoal.dependent_waits (workflow, upstream_task);
CREATE INDEX dependent_waits_by_waiter ON shoal.dependent_waits (instance_id, task);

-- Successful runs ('' task) and task successes by business time (the run's schedule_time,
-- else its submit time, as wall-clock time in its own offset).
CREATE TABLE shoal.successes (
    workflow      text      NOT NULL,
    task          text      NOT NULL,
    business_time timestamp NOT NULL,
    instance_id   uuid      NOT NULL,
    PRIMARY KEY (workflow, task, business_time, instance_id)
);

ALTER TABLE shoal_read.task_runs ADD COLUMN child_instance_id uuid;
