-- API tokens minted at run time (POST /api/v1/tokens). Only the sha256 of a token is
-- stored; every API process looks it up per request, so a revocation or an expiry holds
-- everywhere at the next request. A name is unique among tokens not revoked (it is the
-- actor the audit trail records).
CREATE TABLE shoal.api_tokens (
    id         uuid PRIMARY KEY,
    name       text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    expires_at timestamptz,
    revoked_at timestamptz,
    revoked_by text
);
CREATE UNIQUE INDEX api_tokens_live_name ON shoal.api_tokens (name) WHERE revoked_at IS NULL;

-- The audit trail in the read model: who started a run, who last controlled it (pause,
-- resume, stop, rerun, recover, force-success) and who stopped it.
ALTER TABLE shoal_read.workflow_runs ADD COLUMN actor text;
ALTER TABLE shoal_read.workflow_runs ADD COLUMN last_actor text;
ALTER TABLE shoal_read.workflow_runs ADD COLUMN stopped_by text;
CREATE INDEX workflow_runs_by_actor ON shoal_read.workflow_runs (actor, submitted_at DESC);
