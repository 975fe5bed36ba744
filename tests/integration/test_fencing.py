"""Two orchestrator handlers with their own caches writing one stream: the stale one fences."""

from __future__ import annotations

import uuid

import pytest

from shoal.core.model import StartWorkflow, TaskStarted, TaskSucceeded
from shoal.infra import codec
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore
from shoal_orchestrator.handler import BatchHandler, Cache, Record

pytestmark = pytest.mark.integration

DEF = {"name": "pair", "description": "", "params": {}, "failure_strategy": "end",
       "priority": "medium", "worker_group": "default", "tasks": [
           {"name": "a", "type": "shell", "command": "true", "depends_on": [], "outputs": [],
            "priority": "medium", "worker_group": None, "env": {}, "description": ""},
           {"name": "b", "type": "shell", "command": "true", "depends_on": ["a"],
            "outputs": [], "priority": "medium", "worker_group": None, "env": {},
            "description": ""}]}


def rec(cmd) -> Record:
    return Record("t.commands", 0, 0, cmd.instance_id.encode(), codec.encode_command(cmd))


async def test_a_stale_handler_is_fenced_reloads_and_decides_correctly(pool):
    await pool.execute("INSERT INTO shoal.workflow_definitions (name, version, definition, "
                       "source) VALUES ('pair', 1, $1::jsonb, '')", codec.dumps(DEF).decode())
    store = EventStore(pool)
    settings = Settings(topic_prefix="t")
    old, new = BatchHandler(settings, store, Cache()), BatchHandler(settings, store, Cache())
    iid = str(uuid.uuid4())
    start = StartWorkflow(message_id=str(uuid.uuid4()), instance_id=iid, sent_at="t",
                          workflow="pair")
    await old.handle([rec(start)])                     # old owner caches the run
    dispatch = (await store.events_of(iid))[-1].data
    assert dispatch["task"] == "a"
    fields = dict(instance_id=iid, sent_at="t", task="a", attempt=1,
                  dispatch_id=dispatch["dispatch_id"], worker_id="w")
    # The new owner (after a rebalance) applies the start report; the old one is now stale.
    await new.handle([rec(TaskStarted(message_id=str(uuid.uuid4()), **fields))])
    # The old owner, a zombie, receives the success: its cached seq collides, it fences,
    # reloads from the log and appends on top of what the new owner wrote.
    result = await old.handle([rec(TaskSucceeded(message_id=str(uuid.uuid4()), **fields,
                                                 exit_code=0))])
    assert result.appended == 2
    types = [e.type for e in await store.events_of(iid)]
    assert types == ["WorkflowSubmitted", "WorkflowStarted", "TaskDispatched", "TaskStarted",
                     "TaskSucceeded", "TaskDispatched"]


async def test_a_redelivered_batch_changes_nothing(pool):
    await pool.execute("INSERT INTO shoal.workflow_definitions (name, version, definition, "
                       "source) VALUES ('pair', 1, $1::jsonb, '')", codec.dumps(DEF).decode())
    store = EventStore(pool)
    h = BatchHandler(Settings(topic_prefix="t"), store, Cache())
    start = StartWorkflow(message_id=str(uuid.uuid4()), instance_id=str(uuid.uuid4()),
                          sent_at="t", workflow="pair")
    first = await h.handle([rec(start)])
    outbox = await pool.fetchval("SELECT count(*) FROM shoal.outbox")
    again = await BatchHandler(Settings(topic_prefix="t"), store, Cache()).handle([rec(start)])
    assert first.appended == 3 and again.appended == 0 and again.duplicates == 1
    assert await pool.fetchval("SELECT count(*) FROM shoal.outbox") == outbox


async def test_the_handler_snapshots_every_n_events_and_a_new_owner_loads_from_it(pool):
    """With SHOAL_SNAPSHOT_EVERY=4 a chain's run crosses 4 and 8: the handler writes the
    snapshot in the batch's transaction, and another handler loads the same state."""
    chain = {**DEF, "name": "chain4", "tasks": [
        {**DEF["tasks"][0], "name": f"t{i}", "depends_on": [f"t{i - 1}"] if i else []}
        for i in range(4)]}
    await pool.execute("INSERT INTO shoal.workflow_definitions (name, version, definition, "
                       "source) VALUES ('chain4', 1, $1::jsonb, '')",
                       codec.dumps(chain).decode())
    store = EventStore(pool)
    settings = Settings(topic_prefix="t", snapshot_every=4)
    owner = BatchHandler(settings, store, Cache())
    iid = str(uuid.uuid4())
    await owner.handle([rec(StartWorkflow(message_id=str(uuid.uuid4()), instance_id=iid,
                                          sent_at="t", workflow="chain4"))])
    for _ in range(3):
        d = (await store.events_of(iid))[-1].data
        await owner.handle([rec(TaskSucceeded(
            message_id=str(uuid.uuid4()), instance_id=iid, sent_at="t", task=d["task"],
            attempt=1, dispatch_id=d["dispatch_id"], worker_id="w", exit_code=0))])
    seq = await pool.fetchval("SELECT seq FROM shoal.snapshots WHERE instance_id = $1",
                              uuid.UUID(iid))
    last = len(await store.events_of(iid))
    assert seq is not None and seq >= 8 and seq <= last
    live = owner.cache.get(iid)
    assert (await store.load_runs([iid]))[iid] == live
    successor = BatchHandler(settings, store, Cache())
    assert await successor.load_partitions([0]) == 1
    assert successor.cache.get(iid) == live
