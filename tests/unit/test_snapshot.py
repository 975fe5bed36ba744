"""Snapshots hold exactly the folded state: restoring one and folding the rest equals
folding everything."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.evolve import evolve
from shoal.core.snapshot import FORMAT, from_snapshot, snapshot_due, to_snapshot
from tests.unit.test_workflow import IID, Driver, dags, random_history, roundtrip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_snapshot_then_tail_equals_the_whole_fold(raw, data):
    d = random_history(Driver(raw), data)
    log = roundtrip(d.log)
    cut = data.draw(st.integers(1, len(log)))
    run = None
    for e in log[:cut]:
        run = evolve(run, e, instance_id=IID)
    stored = json.loads(json.dumps(to_snapshot(run)))  # as it comes back from jsonb
    restored = from_snapshot(stored)
    assert restored == run
    for e in log[cut:]:
        restored = evolve(restored, e, instance_id=IID)
    assert restored == d.r


def test_a_snapshot_of_another_format_is_not_used():
    assert from_snapshot({"format": FORMAT + 1}) is None


@given(st.integers(1, 10_000), st.integers(0, 50), st.integers(1, 500))
def test_snapshot_due_exactly_when_a_multiple_is_crossed(first, extra, every):
    last = first + extra
    crossed = any(s % every == 0 for s in range(first, last + 1))
    assert snapshot_due(first, last, every) == crossed
