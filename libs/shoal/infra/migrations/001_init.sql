-- The event store (written by orchestrators only), definitions (written by the API),
-- and the read models (written by the projector).
CREATE SCHEMA IF NOT EXISTS shoal;

CREATE TABLE shoal.events (
    global_position bigserial NOT NULL UNIQUE,
    instance_id     uuid        NOT NULL,
    seq             integer     NOT NULL,
    type            text        NOT NULL,
    data            jsonb       NOT NULL,
    causation_id    uuid,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, seq)
);

-- One row per applied input: a redelivered message_id is recognised and changes nothing.
CREATE TABLE shoal.processed_messages (
    message_id   uuid PRIMARY KEY,
    instance_id  uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Effects written in the same transaction as the events; the relay publishes and deletes.
CREATE TABLE shoal.outbox (
    id         bigserial PRIMARY KEY,
    topic      text  NOT NULL,
    key        bytea,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Index of streams by partition and state: on assignment an orchestrator pages through
-- the unfinished instances of its partitions only.
CREATE TABLE shoal.streams (
    instance_id uuid PRIMARY KEY,
    partition   integer NOT NULL,
    last_seq    integer NOT NULL,
    state       text    NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX streams_unfinished ON shoal.streams (partition)
    WHERE state NOT IN ('succeeded', 'failed', 'stopped');

CREATE TABLE shoal.workflow_definitions (
    name       text    NOT NULL,
    version    integer NOT NULL,
    definition jsonb   NOT NULL,
    source     text    NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE SCHEMA IF NOT EXISTS shoal_read;

CREATE TABLE shoal_read.workflow_runs (
    instance_id        uuid PRIMARY KEY,
    workflow           text NOT NULL,
    version            integer NOT NULL,
    state              text NOT NULL,
    priority           text NOT NULL,
    params             jsonb NOT NULL DEFAULT '{}',
    schedule_time      timestamptz,
    submitted_at       timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    duration_ms        bigint,
    attempt            integer NOT NULL DEFAULT 1,
    parent_instance_id uuid,
    failure            text,
    last_seq           integer NOT NULL DEFAULT 0
);
CREATE INDEX workflow_runs_by_workflow ON shoal_read.workflow_runs (workflow, submitted_at DESC);
CREATE INDEX workflow_runs_by_state ON shoal_read.workflow_runs (state, submitted_at DESC);

CREATE TABLE shoal_read.task_runs (
    instance_id uuid    NOT NULL,
    task        text    NOT NULL,
    attempt     integer NOT NULL,
    state       text    NOT NULL,
    worker_id   text,
    started_at  timestamptz,
    finished_at timestamptz,
    duration_ms bigint,
    exit_code   integer,
    outputs     jsonb NOT NULL DEFAULT '{}',
    error       text,
    PRIMARY KEY (instance_id, task, attempt)
);

CREATE TABLE shoal_read.checkpoints (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);
