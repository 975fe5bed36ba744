"""Every release's golden corpus (tests/golden/<release>/), replayed by this build.

For every recorded run: the fold of its events equals the read model the projector
wrote, every replay step equals the step recorded, the consistency checker's rules find
nothing, and shadow replay finds no decision this build makes differently. The corpus
of a release is recorded once (``make golden``) and never removed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shoal.core import rows as row_fold
from shoal.core import workflow
from shoal.core.check import check_history, check_read_model
from shoal.core.definition import RetryPolicy
from shoal.core.model import event_from_data
from shoal.core.replay import steps, view
from shoal.core.rows import RUN_COLUMNS, TASK_COLUMNS
from shoal.core.shadow import Recorded, shadow_run
from shoal.core.versions import version_of
from shoal.infra.shadow import Filter, bundle_histories, shadow_histories
from tests.golden import corpus

RUNS = list(corpus.runs())


def _recorded(events: list[dict[str, Any]]) -> list[Recorded]:
    return [Recorded(seq=e["seq"], type=e["type"], data=e["data"],
                     causation_id=e.get("causation_id"), recorded_at=e.get("recorded_at"),
                     schema_version=version_of(e)) for e in events]


def test_there_is_a_corpus_of_every_kind():
    assert corpus.releases(), "tests/golden/ holds no release"
    scenarios = {r.body["scenario"] for r in RUNS}
    for kind in ("chain", "fanout", "retry", "timeout", "pause-resume", "stop-rerun", "rerun",
                 "recover", "force-success", "conditions", "switch", "sub-workflow", "child",
                 "dependent", "dry-run", "fork", "imported-bundle", "lost", "serial"):
        assert kind in scenarios, kind


@pytest.mark.parametrize("release", corpus.releases(), ids=lambda p: p.name)
def test_a_release_corpus_is_whole(release: Path):
    """Every run its manifest lists is there (none is ever removed), and no other."""
    manifest = json.loads((release / "MANIFEST.json").read_text())
    assert manifest["release"] == release.name
    assert sorted(p.name for p in (release / "runs").glob("*.json")) == manifest["runs"]
    for scenario, ids in manifest["scenarios"].items():
        assert ids, scenario


@pytest.mark.parametrize("golden", RUNS, ids=str)
def test_every_replay_step_is_the_recorded_one(golden: corpus.GoldenRun):
    got = [{"seq": seq, "type": event.type, **view(run)} for seq, event, run in steps(
        ((e["seq"], event_from_data(e["type"], e["data"], version_of(e)))
         for e in golden.events),
        instance_id=golden.instance_id)]
    want = [{k: v for k, v in step.items() if k != "recorded_at"}
            for step in golden.body["replay"]]
    assert got == want


@pytest.mark.parametrize("golden", RUNS, ids=str)
def test_the_fold_is_the_recorded_read_model(golden: corpus.GoldenRun):
    # Releases before schema versions wrote none: their shape is version 1.
    events = [SimpleNamespace(instance_id=golden.instance_id, **{"schema_version": 1, **e})
              for e in golden.events]
    folded = row_fold.fold(row_fold.Rows(), events, imported=golden.body["imported"])
    recorded = golden.body["read_model"]
    assert corpus.row(folded.runs[golden.instance_id], RUN_COLUMNS) == recorded["workflow_run"]
    tasks = sorted((corpus.row(t, TASK_COLUMNS) for t in folded.tasks.values()),
                   key=lambda t: (t["task"], t["attempt"]))
    assert tasks == recorded["task_runs"]


@pytest.mark.parametrize("golden", RUNS, ids=str)
def test_the_checker_is_clean(golden: corpus.GoldenRun):
    history = [(e["seq"], e["recorded_at"], event_from_data(e["type"], e["data"],
                                                            version_of(e)))
               for e in golden.events]
    run, violations = check_history(golden.instance_id, history,
                                    now=datetime.now(UTC), grace=timedelta(seconds=60))
    assert run is not None and violations == []
    recorded = golden.body["read_model"]
    assert check_read_model(run, recorded["workflow_run"], recorded["task_runs"],
                            imported=golden.body["imported"]) == []


@pytest.mark.parametrize("golden", RUNS, ids=str)
def test_shadow_replay_finds_no_difference(golden: corpus.GoldenRun):
    report = shadow_run(golden.instance_id, _recorded(golden.events))
    assert report.differences == []
    assert report.compared > 0


@pytest.mark.parametrize(("release", "path"), list(corpus.bundles()), ids=lambda v: str(v))
def test_shadow_replay_of_the_corpus_bundles(release: str, path: Any):
    found = list(shadow_histories(bundle_histories(json.loads(path.read_text())), Filter()))
    assert len(found) == 1 and found[0].differences == [] and found[0].compared > 0


def _retry_runs() -> list[corpus.GoldenRun]:
    return [g for g in RUNS if any(e["type"] == "TaskRetryScheduled" for e in g.events)]


def test_a_changed_retry_rule_is_named_by_run_and_event(monkeypatch: pytest.MonkeyPatch):
    """Acceptance: a deliberate change to a decision rule (every retry waits 7 s more)
    makes shadow replay name each run that retried and the event where it departs."""
    retried = _retry_runs()
    assert retried, "the corpus has a run that retried"
    original = RetryPolicy.delay
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, n: original(self, n) + 7)
    found = {(d.instance_id, d.seq, d.event_type)
             for g in RUNS for d in shadow_run(g.instance_id, _recorded(g.events)).differences}
    want = {(g.instance_id, next(e["seq"] for e in g.events
                                 if e["type"] == "TaskRetryScheduled"), "TaskRetryScheduled")
            for g in retried}
    assert found == want


def test_a_changed_dispatch_order_is_named_by_run_and_event(monkeypatch: pytest.MonkeyPatch):
    """Acceptance: ready tasks dispatched in reverse order are found in the fan-out."""
    original = workflow.ready_tasks
    monkeypatch.setattr(workflow, "ready_tasks", lambda run: original(run)[::-1])
    fanout = next(g for g in RUNS if g.body["scenario"] == "fanout")
    diffs = shadow_run(fanout.instance_id, _recorded(fanout.events)).differences
    assert diffs, "reversing the dispatch order of four ready leaves must be found"
    first = diffs[0]
    assert first.instance_id == fanout.instance_id and first.event_type == "TaskDispatched"
    assert fanout.events[first.seq - 1]["type"] == "TaskDispatched"
