-- Serial execution (serial_wait / serial_discard / serial_priority): at most one running
-- run per workflow, enforced by a unique partial index, so two orchestrators starting runs
-- of the same workflow at once cannot both take the slot (the loser is fenced and
-- re-decides). Waiting runs queue here; releasing the slot promotes the next one in the
-- same transaction and wakes it through the outbox.
CREATE TABLE shoal.serial_slots (
    workflow    text    NOT NULL,
    instance_id uuid    NOT NULL,
    state       text    NOT NULL CHECK (state IN ('running', 'waiting')),
    mode        text    NOT NULL,
    priority    integer NOT NULL,
    seq         bigserial,
    PRIMARY KEY (workflow, instance_id)
);
CREATE UNIQUE INDEX serial_slots_one_running ON shoal.serial_slots (workflow)
    WHERE state = 'running';
