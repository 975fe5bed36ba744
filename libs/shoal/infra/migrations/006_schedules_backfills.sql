-- Schedules and backfills are definitions the API owns (like workflow definitions): it
-- writes them here and publishes each change to the compacted <prefix>.schedules topic,
-- which is what schedulers read. A scheduler's fire cursors live in Kafka only.
CREATE TABLE shoal.schedules (
    id         uuid PRIMARY KEY,
    workflow   text        NOT NULL,
    record     jsonb       NOT NULL,   -- the Schedule as published (kind = schedule)
    deleted    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_by_workflow ON shoal.schedules (workflow) WHERE NOT deleted;

-- A backfill's plan is fixed up front: one row per run, in admission order; the
-- scheduler that owns the backfill pages through it and admits runs at the backfill's pace.
CREATE TABLE shoal.backfills (
    id          uuid PRIMARY KEY,
    workflow    text        NOT NULL,
    record      jsonb       NOT NULL,  -- as published (kind = backfill): mode, state, ...
    total       integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shoal.backfill_runs (
    backfill_id   uuid        NOT NULL REFERENCES shoal.backfills (id) ON DELETE CASCADE,
    idx           integer     NOT NULL,
    schedule_time timestamptz NOT NULL,
    instance_id   uuid        NOT NULL,
    PRIMARY KEY (backfill_id, idx)
);
CREATE INDEX backfill_runs_by_instance ON shoal.backfill_runs (instance_id);

-- Release state of a workflow (DolphinScheduler's online/offline) and deletion. A
-- workflow without a row is online. Offline or deleted workflows are not fired by
-- schedules, and the API refuses to start them.
CREATE TABLE shoal.workflow_status (
    name       text PRIMARY KEY,
    online     boolean     NOT NULL DEFAULT true,
    deleted    boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
