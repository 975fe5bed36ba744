"""The error policy in the orchestrator's handler, against the real database: a transient
failure is retried and never dead-lettered; a failure of one input splits the batch so the
others are applied; a fenced batch re-checks every input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import pytest

from shoal.core.model import StartWorkflow, TaskSucceeded
from shoal.infra import codec
from shoal.infra.db import connect_pool
from shoal.infra.policy import is_transient
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore
from shoal_orchestrator.handler import BatchHandler, Cache
from shoal_orchestrator.main import _handle_until_done
from tests.integration.test_fencing import DEF, rec

pytestmark = pytest.mark.integration


async def _define(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO shoal.workflow_definitions (name, version, definition, "
                       "source) VALUES ('pair', 1, $1::jsonb, '')", codec.dumps(DEF).decode())


def _start(**kw: Any) -> StartWorkflow:
    return StartWorkflow(message_id=str(uuid.uuid4()), instance_id=str(uuid.uuid4()),
                         sent_at="t", workflow="pair", **kw)


class LookupDrops(EventStore):
    """The connection drops under the first definition lookups (a database cut)."""

    def __init__(self, pool: asyncpg.Pool, drops: int) -> None:
        super().__init__(pool)
        self.drops = drops

    async def definition(self, name: str, version: int | None) -> Any:
        if self.drops:
            self.drops -= 1
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle "
                                                      "of operation")
        return await super().definition(name, version)


async def test_a_connection_lost_during_the_definition_lookup_is_retried_not_dead_lettered(pool):
    await _define(pool)
    store = LookupDrops(pool, drops=2)
    h = BatchHandler(Settings(topic_prefix="t"), store, Cache())
    start = _start()
    result = await asyncio.wait_for(_handle_until_done(h, [rec(start)], asyncio.Event()), 30)
    assert result is not None
    assert result.dead_letters == []
    assert result.appended == 3 and store.drops == 0
    types = [e.type for e in await store.events_of(start.instance_id)]
    assert types[:2] == ["WorkflowSubmitted", "WorkflowStarted"]


async def test_one_input_failing_in_the_commit_splits_the_batch_and_the_rest_is_applied(pool):
    await _define(pool)
    store = EventStore(pool)
    h = BatchHandler(Settings(topic_prefix="t"), store, Cache())
    good = [_start() for _ in range(3)]
    # Passes the schema and the core, but Postgres refuses its NUL character in jsonb
    # (a DataError at commit: the whole batch's transaction fails).
    bad = _start(params={"x": "a\x00b"})
    records = [rec(good[0]), rec(bad), rec(good[1]), rec(good[2])]
    result = await asyncio.wait_for(_handle_until_done(h, records, asyncio.Event()), 30)
    assert result is not None
    assert [r.value for r, _ in result.dead_letters] == [records[1].value]
    assert result.dead_letters[0][1]
    for s in good:
        assert [e.type for e in await store.events_of(s.instance_id)][:2] == [
            "WorkflowSubmitted", "WorkflowStarted"]


class Racing(EventStore):
    """After its first ``processed()`` check, another owner applies the same inputs
    (a rebalance in between): this owner's commit then conflicts and fences."""

    def __init__(self, pool: asyncpg.Pool, other: Callable[[], Awaitable[object]]) -> None:
        super().__init__(pool)
        self.other: Callable[[], Awaitable[object]] | None = other

    async def processed(self, message_ids: Iterable[str]) -> set[str]:
        done = await super().processed(message_ids)
        if self.other is not None:
            other, self.other = self.other, None
            await other()
        return done


async def test_a_fenced_batch_rechecks_every_input_the_other_owner_applied(pool):
    """A second start of a run reaches two owners; the other one applies it (an
    InputRejected) after this one checked it was new: after the fence this one does not
    apply it again."""
    await _define(pool)
    settings = Settings(topic_prefix="t")
    plain = EventStore(pool)
    start = _start()
    iid = start.instance_id
    again = [rec(StartWorkflow(message_id=str(uuid.uuid4()), instance_id=iid, sent_at="t",
                               workflow="pair"))]
    new = BatchHandler(settings, plain, Cache())
    store = Racing(pool, lambda: new.handle(again))
    old = BatchHandler(settings, store, Cache())
    store.other = None
    await old.handle([rec(start)])
    store.other = lambda: new.handle(again)
    result = await old.handle(again)   # stale by then: conflicts, fences, reloads
    types = [e.type for e in await plain.events_of(iid)]
    assert types.count("InputRejected") == 1, types
    assert result.appended == 0 and result.duplicates == 1


async def test_the_append_lock_is_waited_for_only_up_to_the_lock_timeout(pool, database):
    """A stuck holder of the append lock makes a commit fail fast with a transient error
    (retried by the policy), not queue for ever."""
    await _define(pool)
    holder = await asyncpg.connect(database)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("LOCK TABLE shoal.events IN EXCLUSIVE MODE")
    try:
        h = BatchHandler(Settings(topic_prefix="t"), EventStore(pool, lock_timeout=0.5), Cache())
        with pytest.raises(asyncpg.LockNotAvailableError) as exc:
            await asyncio.wait_for(h.handle([rec(_start())]), 10)
        assert is_transient(exc.value)
    finally:
        await tx.rollback()
        await holder.close()


async def test_a_pool_statement_gives_up_after_the_command_timeout(database):
    pool = await connect_pool(database, max_size=1, command_timeout=0.5)
    try:
        with pytest.raises(TimeoutError) as exc:
            await asyncio.wait_for(pool.execute("SELECT pg_sleep(30)"), 10)
        assert is_transient(exc.value)
    finally:
        await pool.close()


async def test_a_finished_run_leaves_the_cache_and_a_late_input_still_finds_it(pool):
    await _define(pool)
    store = EventStore(pool)
    h = BatchHandler(Settings(topic_prefix="t"), store, Cache())
    start = _start()
    iid = start.instance_id
    await h.handle([rec(start)])
    assert iid in h.cache
    for _ in range(2):
        d = (await store.events_of(iid))[-1].data
        await h.handle([rec(TaskSucceeded(
            message_id=str(uuid.uuid4()), instance_id=iid, sent_at="t", task=d["task"],
            attempt=1, dispatch_id=d["dispatch_id"], worker_id="w", exit_code=0))])
    assert (await store.events_of(iid))[-1].type == "WorkflowSucceeded"
    assert iid not in h.cache
    late = await h.handle([rec(StartWorkflow(message_id=str(uuid.uuid4()), instance_id=iid,
                                             sent_at="t", workflow="pair"))])
    assert late.appended == 1 and iid not in h.cache   # its InputRejected, from the log


async def test_a_run_whose_log_does_not_fold_is_refused_alone(pool):
    """An event the orchestrator's fold rejects (written by hand, or met by a fold bug)
    leaves that run out of a partition's load and dead-letters its inputs with the reason;
    the other runs of the partition are loaded and decided as usual (the load used to fail
    as a whole, and be retried for ever, stalling every run of the partition)."""
    await _define(pool)
    store = EventStore(pool)
    first = BatchHandler(Settings(topic_prefix="t"), store, Cache())
    good, bad = _start(), _start()
    await first.handle([rec(good), rec(bad)])
    last = await pool.fetchval("SELECT max(seq) FROM shoal.events WHERE instance_id = $1",
                               uuid.UUID(bad.instance_id))
    await pool.execute(
        "INSERT INTO shoal.events (instance_id, seq, type, data) VALUES ($1, $2, "
        "'TaskSucceeded', '{\"task\": 5}'::jsonb)", uuid.UUID(bad.instance_id), last + 1)
    partitions = [r["partition"] for r in await pool.fetch(
        "SELECT DISTINCT partition FROM shoal.streams")]
    owner = BatchHandler(Settings(topic_prefix="t"), store, Cache())  # after a rebalance
    assert await owner.load_partitions(partitions) == 1
    assert good.instance_id in owner.cache and bad.instance_id not in owner.cache

    def succeeded(iid: str, d: dict[str, Any]) -> TaskSucceeded:
        return TaskSucceeded(message_id=str(uuid.uuid4()), instance_id=iid, sent_at="t",
                             task=d["task"], attempt=1, dispatch_id=d["dispatch_id"],
                             worker_id="w", exit_code=0)
    reports = [succeeded(c.instance_id, next(e.data for e in await store.events_of(
        c.instance_id) if e.type == "TaskDispatched")) for c in (good, bad)]
    result = await owner.handle([rec(r) for r in reports])
    assert [r.key for r, _ in result.dead_letters] == [bad.instance_id.encode()]
    assert "cannot be folded at TaskSucceeded seq" in result.dead_letters[0][1]
    assert [e.type for e in await store.events_of(good.instance_id)][-2:] == [
        "TaskSucceeded", "TaskDispatched"]
