"""Every release's golden corpus loaded into a fresh database of this build's schema: the
projection rebuilt from it is the read model recorded, the consistency checker is clean,
and ``shoal shadow-replay`` over the log finds no difference (and names one made on
purpose)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shoal.core.rows import RUN_COLUMNS, TASK_COLUMNS
from shoal.core.versions import version_of
from shoal.infra.checker import check
from shoal.infra.readmodels import rebuild
from shoal.infra.shadow import Filter, database_histories
from tests.golden import corpus
from tests.support import Stack

RELEASES = [p.name for p in corpus.releases()]


async def _load(pool: asyncpg.Pool, release: str, *, imported: bool = False,
                ) -> list[corpus.GoldenRun]:
    """The release's runs into shoal.events in the order they were recorded, or (another
    installation: a bundle may be of a run the corpus also holds) its imported runs."""
    runs = [g for g in corpus.runs() if g.release == release
            and g.body["imported"] == imported]
    live = sorted(((e, g) for g in runs if not g.body["imported"] for e in g.events),
                  key=lambda eg: (eg[0]["recorded_at"], eg[1].instance_id, eg[0]["seq"]))
    await pool.executemany(
        "INSERT INTO shoal.events (instance_id, seq, type, data, causation_id, recorded_at, "
        "schema_version) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
        [(uuid.UUID(g.instance_id), e["seq"], e["type"], json.dumps(e["data"]),
          e["causation_id"], datetime.fromisoformat(e["recorded_at"]), version_of(e))
         for e, g in live])
    for g in runs:
        if not g.body["imported"]:
            continue
        first = g.events[0]["data"]
        await pool.execute(
            "INSERT INTO shoal.imported_runs (instance_id, bundle_schema, definition) "
            "VALUES ($1, 'shoal.run-bundle/1', $2::jsonb)", uuid.UUID(g.instance_id),
            json.dumps({k: first[k] for k in ("workflow", "version", "definition")}))
        await pool.executemany(
            "INSERT INTO shoal.imported_events (instance_id, seq, global_position, type, data, "
            "causation_id, recorded_at, schema_version) VALUES ($1, $2, 0, $3, $4::jsonb, $5, "
            "$6, $7)",
            [(uuid.UUID(g.instance_id), e["seq"], e["type"], json.dumps(e["data"]),
              e["causation_id"], datetime.fromisoformat(e["recorded_at"]), version_of(e))
             for e in g.events])
    return runs


@pytest.mark.parametrize("release", RELEASES)
async def test_a_release_corpus_rebuilds_checks_and_shadow_replays_clean(
        release: str, pool: asyncpg.Pool, database: str, other_stack: Stack):
    await _check_loaded(pool, database, release, imported=False)
    async with asyncpg.create_pool(other_stack.database_url, min_size=1, max_size=2) as other:
        await _check_loaded(other, other_stack.database_url, release, imported=True)


async def _check_loaded(pool: asyncpg.Pool, database: str, release: str, *,
                        imported: bool) -> None:
    runs = await _load(pool, release, imported=imported)
    assert runs or not imported
    await rebuild(pool)
    for g in runs:
        row = await pool.fetchrow("SELECT * FROM shoal_read.workflow_runs WHERE instance_id "
                                  "= $1", uuid.UUID(g.instance_id))
        tasks = await pool.fetch("SELECT * FROM shoal_read.task_runs WHERE instance_id = $1 "
                                 "ORDER BY task, attempt", uuid.UUID(g.instance_id))
        assert row is not None, g
        assert corpus.row(dict(row), RUN_COLUMNS) == g.body["read_model"]["workflow_run"], g
        assert [corpus.row(dict(t), TASK_COLUMNS) for t in tasks] == \
            g.body["read_model"]["task_runs"], g
    report, _ = await check(pool, grace=3600)
    assert report.violations == [] and report.instances == len(runs)

    summary = await database_histories(database, Filter())
    assert summary.differences == 0 and summary.unreconstructed == 0
    assert sorted(r.instance_id for r in summary.runs) == sorted(g.instance_id for g in runs)
    assert all(r.compared > 0 for r in summary.runs)
    if not imported:
        chain = await database_histories(database, Filter(workflow="g-chain"))
        assert chain.runs and {r.workflow for r in chain.runs} == {"g-chain"}


def _cli(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_DATABASE_URL": database}
    return subprocess.run([sys.executable, "-m", "shoal.cli", "shadow-replay", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


async def test_the_cli_names_a_decision_that_differs_and_reads_only(pool: asyncpg.Pool,
                                                                     database: str):
    release = RELEASES[-1]
    runs = await _load(pool, release)
    ok = _cli(database)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 differ" in ok.stdout
    # The log as a different engine would have written it: one retry an hour later.
    g = next(g for g in runs if any(e["type"] == "TaskRetryScheduled" for e in g.events))
    seq = next(e["seq"] for e in g.events if e["type"] == "TaskRetryScheduled")
    await pool.execute(
        "UPDATE shoal.events SET data = jsonb_set(data, '{fire_at}', to_jsonb("
        "((data->>'fire_at')::timestamptz + interval '1 hour')::text)) "
        "WHERE instance_id = $1 AND seq = $2", uuid.UUID(g.instance_id), seq)
    before = await pool.fetchval("SELECT count(*) FROM shoal.events")
    found = _cli(database)
    assert found.returncode == 1, found.stdout + found.stderr
    workflow = g.events[0]["data"]["workflow"]
    assert f"run {g.instance_id} ({workflow}) seq {seq} TaskRetryScheduled" in found.stdout
    assert "fire_at" in found.stdout
    as_json: dict[str, Any] = json.loads(_cli(database, "--json").stdout)
    assert [(d["instance_id"], d["seq"]) for d in as_json["differences"]] == [
        (g.instance_id, seq)]
    assert await pool.fetchval("SELECT count(*) FROM shoal.events") == before
    # Filters: another workflow only; decisions after the last one recorded.
    assert _cli(database, "--workflow", "g-chain").returncode == 0
    assert _cli(database, "--instance", g.instance_id).returncode == 1
    assert _cli(database, "--since", "2999-01-01").returncode == 0
    assert _cli(database, "--since", "soon").returncode == 2
    bundle = Path(next(p for _, p in corpus.bundles()))
    assert _cli(database, "--bundle", str(bundle)).returncode == 0
