-- Task output, as shipped by workers in numbered chunks (idempotent by primary key).
CREATE TABLE shoal_read.task_logs (
    instance_id uuid    NOT NULL,
    task        text    NOT NULL,
    attempt     integer NOT NULL,
    chunk       integer NOT NULL,
    lines       jsonb   NOT NULL,      -- [[timestamp, line], ...]
    final       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (instance_id, task, attempt, chunk)
);

-- The last heartbeat of every worker.
CREATE TABLE shoal_read.workers (
    worker_id      text PRIMARY KEY,
    worker_group   text        NOT NULL,
    host           text,
    pid            integer,
    slots          integer     NOT NULL,
    running        jsonb       NOT NULL DEFAULT '[]',
    stopping       boolean     NOT NULL DEFAULT false,
    last_heartbeat timestamptz NOT NULL
);
