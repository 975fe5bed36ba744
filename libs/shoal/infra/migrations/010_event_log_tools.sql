-- Forks link back to the run and event they started from.
ALTER TABLE shoal_read.workflow_runs ADD COLUMN forked_from_instance_id uuid;
ALTER TABLE shoal_read.workflow_runs ADD COLUMN forked_from_seq integer;
-- Runs imported from an incident bundle: read-only, never executed.
ALTER TABLE shoal_read.workflow_runs ADD COLUMN imported boolean NOT NULL DEFAULT false;

-- Incident bundles imported from another installation (`shoal import-run`). Their events
-- live here, not in shoal.events: no orchestrator ever folds or acts on them.
CREATE TABLE shoal.imported_runs (
    instance_id uuid PRIMARY KEY,
    bundle_schema text NOT NULL,
    exported_at  timestamptz,
    source       jsonb NOT NULL DEFAULT '{}',
    definition   jsonb NOT NULL,
    logs         jsonb NOT NULL DEFAULT '[]',
    imported_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE shoal.imported_events (
    instance_id     uuid    NOT NULL REFERENCES shoal.imported_runs ON DELETE CASCADE,
    seq             integer NOT NULL,
    global_position bigint  NOT NULL,  -- in the installation it was exported from
    type            text    NOT NULL,
    data            jsonb   NOT NULL,
    causation_id    text,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

-- The periodic consistency check's sweep cursor (its position is in shoal_read.checkpoints).
CREATE TABLE shoal.checker_state (
    name  text PRIMARY KEY,
    value text
);

-- The latest snapshot of each instance's folded state (written with the events that
-- reach it, every SHOAL_SNAPSHOT_EVERY events); loading = snapshot + the events after it.
CREATE TABLE shoal.snapshots (
    instance_id uuid PRIMARY KEY,
    seq         integer     NOT NULL,
    format      integer     NOT NULL,
    state       jsonb       NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now()
);
