-- Live members of the services that own Kafka partitions, for GET /api/v1/cluster:
-- each orchestrator upserts its row every few seconds with its partitions and their lag.
CREATE TABLE shoal.members (
    member_id  text PRIMARY KEY,
    service    text        NOT NULL,
    grp        text        NOT NULL,
    host       text,
    pid        integer,
    partitions integer[]   NOT NULL DEFAULT '{}',
    lag        jsonb       NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Workers report the same in their heartbeats.
ALTER TABLE shoal_read.workers ADD COLUMN partitions jsonb NOT NULL DEFAULT '[]';
ALTER TABLE shoal_read.workers ADD COLUMN lag jsonb NOT NULL DEFAULT '{}';
