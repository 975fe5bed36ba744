"""The scheduler ignores records it could not use instead of crashing on them."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.infra import codec
from shoal.infra.settings import Settings
from shoal_scheduler.main import check_record, partition_of

GOOD: dict[str, Any] = {
    "kind": "schedule", "id": "5f0c5ad2-6f0e-4a39-8d43-3c5a4d3f0b61", "workflow": "w",
    "cron": "0 0 2 * * ?", "timezone": "Europe/Berlin", "enabled": True, "params": {},
    "catchup": "all", "epoch": "2026-01-01T00:00:00+00:00",
    "enabled_at": "2026-01-01T00:00:00+00:00", "revision": 1}
BACKFILL: dict[str, Any] = {
    "kind": "backfill", "id": "5f0c5ad2-6f0e-4a39-8d43-3c5a4d3f0b62", "workflow": "w",
    "mode": "serial", "parallelism": 1, "total": 3, "state": "running", "revision": 1}


def test_valid_records_pass():
    check_record(GOOD)
    check_record(BACKFILL)
    check_record({"kind": "schedule", "id": GOOD["id"], "deleted": True, "revision": 3})


@pytest.mark.parametrize("change", [
    {"cron": "nope"}, {"timezone": "Mars/Base"}, {"catchup": "sometimes"}, {"id": "x"},
    {"epoch": None}, {"workflow": None} | {"cron": None},
])
def test_unusable_schedules_are_refused(change):
    with pytest.raises((ValueError, KeyError, TypeError)):
        check_record({k: v for k, v in (GOOD | change).items() if v is not None})


@pytest.mark.parametrize("change", [{"mode": "zigzag"}, {"state": "exploded"}, {"total": "x"}])
def test_unusable_backfills_are_refused(change):
    with pytest.raises((ValueError, KeyError, TypeError)):
        check_record(BACKFILL | change)


def test_partition_matches_the_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(12))
    for key in (b"a", GOOD["id"].encode(), BACKFILL["id"].encode()):
        assert partition_of(key, 12) == DefaultPartitioner()(key, parts, parts)


async def test_a_hand_over_keeps_fires_due_after_the_previous_owners_last_tick():
    """The previous owner ticked at 10:00:01 and died; the new owner takes over at
    10:00:09. The 10:00:05 fire was due while the schedule changed hands: it is on time
    (fired even with catchup none), not missed."""
    from datetime import UTC, datetime

    from shoal.core.schedule import Schedule
    from shoal_scheduler.main import _record_pass

    class Recorder:
        fired: tuple[datetime, ...] = ()

        async def schedule_pass(self, schedule, cursor, owned_since, now):  # type: ignore[no-untyped-def]
            from shoal.core.schedule import next_fires

            plan = next_fires(schedule, after=cursor, until=now, owned_since=owned_since)
            self.fired = plan.fire
            return plan.cursor, None

    t = lambda s: datetime(2026, 12, 3, 10, 0, s, tzinfo=UTC)  # noqa: E731
    record = {**GOOD, "cron": "*/5 * * * * ?", "catchup": "none",
              "epoch": "2026-12-03T09:00:00+00:00", "enabled_at": "2026-12-03T09:00:00+00:00"}
    Schedule.from_dict(record)
    key = record["id"].encode()
    # The previous owner's cursor: last fire 10:00:00, alive at 10:00:01.
    cursors = {key: codec.dumps({"last": t(0).isoformat(), "alive_at": t(1).isoformat()})}
    firer = Recorder()
    await _record_pass(firer, key, codec.dumps(record), cursors, owned_since=t(9), now=t(9),
                       settings=Settings())  # type: ignore[arg-type]
    assert firer.fired == (t(5),)
    assert codec.loads(cursors[key])["alive_at"] == t(9).isoformat()
    # A cursor whose owner was last alive long ago: nobody owned it; catchup applies.
    cursors = {key: codec.dumps({"last": t(0).isoformat(),
                                 "alive_at": "2026-12-03T09:00:00+00:00"})}
    await _record_pass(firer, key, codec.dumps(record), cursors, owned_since=t(9), now=t(9),
                       settings=Settings())  # type: ignore[arg-type]
    assert firer.fired == ()
