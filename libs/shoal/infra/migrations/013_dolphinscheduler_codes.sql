-- Workflows imported from DolphinScheduler: its code of each workflow (and of its tasks)
-- and the Shoal name it became, so later imports resolve references by code (sub-process
-- and dependent tasks) and a re-import keeps the name; the export writes the codes back.
CREATE TABLE shoal.ds_workflows (
    code        bigint PRIMARY KEY,
    name        text        NOT NULL,
    source_name text        NOT NULL,
    tasks       jsonb       NOT NULL DEFAULT '{}',   -- task code (text) -> Shoal task name
    imported_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ds_workflows_name ON shoal.ds_workflows (name);

-- A dependent task may wait for any one of several windows (DolphinScheduler's OR between
-- dependent items): one row per alternative, all removed when one is met.
ALTER TABLE shoal.dependent_waits ADD COLUMN alt integer NOT NULL DEFAULT 0;
ALTER TABLE shoal.dependent_waits DROP CONSTRAINT dependent_waits_pkey;
ALTER TABLE shoal.dependent_waits ADD PRIMARY KEY (dispatch_id, alt);
