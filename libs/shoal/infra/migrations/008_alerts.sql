-- Alert deliveries: written by the projector in the transaction that projects the event
-- they report (so each committed event yields its alerts exactly once), then delivered
-- with retries. `key` is the idempotency key receivers see.
CREATE TABLE shoal.alerts (
    key text PRIMARY KEY,
    channel text NOT NULL,
    event text NOT NULL,
    instance_id uuid NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    gave_up boolean NOT NULL DEFAULT false,
    last_error text
);
CREATE INDEX alerts_pending ON shoal.alerts (next_attempt_at)
    WHERE delivered_at IS NULL AND NOT gave_up;
