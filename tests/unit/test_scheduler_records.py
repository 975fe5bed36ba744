"""The scheduler ignores records it could not use instead of crashing on them."""

from __future__ import annotations

from typing import Any

import pytest

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
