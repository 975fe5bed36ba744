"""A backfill record reaches the scheduler only once its rows are committed: a commit that
fails (here: a deferred check the test adds, failing at COMMIT) publishes nothing."""

from __future__ import annotations

import asyncpg
import pytest

from tests.e2e.kafka_io import read_all
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def test_a_backfill_whose_commit_fails_is_never_published(bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    await stack.apply({"name": "daily", "tasks": [{"name": "t", "command": "true"}]})
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("""
            CREATE FUNCTION refuse_backfill() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$;
            CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON shoal.backfill_runs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_backfill();
        """)
    finally:
        await conn.close()
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                            json={"start": "2026-01-01", "end": "2026-01-03"})
    assert r.status_code >= 500, r.text
    records = await read_all(stack.bootstrap, f"{stack.prefix}.schedules")
    assert [x for x in records if x.get("kind") == "backfill"] == [], records
