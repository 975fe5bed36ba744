"""Poison on every partition of every topic Shoal consumes, then valid commands: every
valid run succeeds, no service exits, and each poison message is in the dead letters
with its reason (the error policy, ``shoal.infra.policy``)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.kafka_io import read_all
from tests.support import Stack, eventually, start_command

pytestmark = pytest.mark.e2e

ONE = {"name": "one", "tasks": [{"name": "t", "command": "echo ok"}]}
ZEROS = "0" * 36


def _commands(p: int) -> list[tuple[bytes | None, bytes | None]]:
    iid = str(uuid.uuid4())
    start = start_command("one")
    return [
        # A pattern-valid id that is not a UUID (Postgres refuses it as data).
        (ZEROS.encode(), json.dumps({**start, "message_id": ZEROS, "instance_id": ZEROS})
         .encode()),
        (iid.encode(), b"{not json " + str(p).encode()),
        (iid.encode(), b"\xff\xfe\x00 not utf-8 " + str(p).encode()),
        (iid.encode(), json.dumps({**start_command("one", instance_id=iid),
                                   "params": ["wrong", "type"], "version": "x"}).encode()),
        (iid.encode(), json.dumps({"type": "PauseWorkflow", "message_id": 7,
                                   "instance_id": iid, "sent_at": p}).encode()),
    ]


def _task_logs(p: int) -> list[tuple[bytes | None, bytes | None]]:
    iid = str(uuid.uuid4())
    return [
        (iid.encode(), b"[broken log chunk " + str(p).encode()),
        (ZEROS.encode(), json.dumps({"instance_id": ZEROS, "task": "t", "attempt": 1,
                                     "chunk": p, "lines": [], "final": True}).encode()),
        (iid.encode(), json.dumps({"instance_id": iid, "task": "t", "attempt": "one",
                                   "chunk": p, "lines": [], "final": True}).encode()),
    ]


def _heartbeats(p: int) -> list[tuple[bytes | None, bytes | None]]:
    w = f"ghost-{p}"
    beat = {"worker_id": w, "group": "default", "slots": 1, "running": [],
            "sent_at": "2026-12-03T00:00:00+00:00"}
    no_group = {k: v for k, v in beat.items() if k != "group"}
    return [(w.encode(), json.dumps(no_group).encode()),
            (w.encode(), json.dumps({**beat, "sent_at": f"yesterday {p}"}).encode()),
            (w.encode(), b"\x80 heartbeat " + str(p).encode())]


def _schedules(p: int) -> list[tuple[bytes | None, bytes | None]]:
    sid = str(uuid.uuid4())
    return [(sid.encode(), b"not a record " + str(p).encode()),
            (sid.encode(), json.dumps({"id": sid, "revision": "many", "workflow": "one",
                                       "cron": "* * * * *"}).encode()),
            (str(uuid.uuid4()).encode(), json.dumps([p]).encode())]


def _dispatches(p: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(ZEROS.encode(), json.dumps({
                "type": "DispatchTask", "message_id": ZEROS, "instance_id": ZEROS,
                "sent_at": "2026-12-03T00:00:00+00:00", "workflow": "one", "task": "t",
                "attempt": 1, "dispatch_id": ZEROS, "task_type": "shell",
                "worker_group": "default", "command": f"echo poison {p}"}).encode()),
            (b"k", b"dispatch? " + str(p).encode())]


def _control(p: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(b"k", b"kill? " + str(p).encode()),
            (b"k", json.dumps({"type": "KillTask", "dispatch_id": ZEROS, "attempt": "x",
                               "task": p}).encode())]


CORPORA = {"commands": _commands, "task-logs": _task_logs,
           "worker-heartbeats": _heartbeats, "schedules": _schedules,
           "tasks.default": _dispatches, "worker-control": _control}


async def test_poison_on_every_partition_of_every_topic(stack: Stack):
    stack.start("scheduler")
    await stack.apply(ONE)
    # Everything is up and reading (tailing readers read from the end).
    first = (await stack.request("POST", "/api/v1/workflows/one/runs", json={})).json()
    assert (await stack.wait_run(first["instance_id"], timeout=90))["state"] == "succeeded"

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    sent: list[dict[str, Any]] = []
    try:
        for name, corpus in CORPORA.items():
            topic = f"{stack.prefix}.{name}"
            parts = sorted(await producer.partitions_for(topic))
            assert len(parts) == 4, (topic, parts)
            for p in parts:
                for key, value in corpus(p):
                    md = await producer.send_and_wait(topic, value, key=key, partition=p)
                    sent.append({"topic": topic, "partition": p, "offset": md.offset,
                                 "value": value})
        # Valid commands after the poison, on every partition of the commands topic.
        valid = [start_command("one") for _ in range(24)]
        for cmd in valid:
            await producer.send_and_wait(f"{stack.prefix}.commands",
                                         json.dumps(cmd).encode(),
                                         key=cmd["instance_id"].encode())
    finally:
        await producer.stop()

    for cmd in valid:
        assert (await stack.wait_run(cmd["instance_id"], timeout=120))["state"] == "succeeded"

    async def all_dead() -> dict[tuple[str, int, int], dict[str, Any]] | None:
        letters = {_where(d): d for d in await read_all(stack.bootstrap,
                                                       f"{stack.prefix}.dead-letters")}
        missing = [s for s in sent if _where(s) not in letters]
        return None if missing else letters

    try:
        letters = await eventually(all_dead, timeout=60, interval=1.0,
                                   what="every poison message in the dead letters")
    except AssertionError:
        letters = {_where(d): d for d in await read_all(stack.bootstrap,
                                                       f"{stack.prefix}.dead-letters")}
        missing = [(s["topic"], s["partition"], s["offset"], s["value"][:60]) for s in sent
                   if _where(s) not in letters]
        print(stack.logs())
        raise AssertionError(f"{len(missing)} poison messages not dead-lettered: {missing}"
                             ) from None
    for s in sent:
        d = letters[_where(s)]
        assert d["reason"], d
        assert base64.b64decode(d["value_b64"]) == (s["value"] or b"")[:65536], d
    reasons = " | ".join(letters[_where(s)]["reason"] for s in sent)
    assert "is not a 'uuid'" in reasons and "not JSON" in reasons
    assert "'group' is a required property" in reasons
    assert "sent_at" in reasons
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited:\n{stack.logs()}"


def _where(d: dict[str, Any]) -> tuple[str, int, int]:
    """Where a message (or the input of a dead letter) was on the broker."""
    return d["topic"], d["partition"], d["offset"]


FUTURE = 99  # a schema version no release has written yet


def _future(tmp: str) -> dict[str, Any]:
    """Per topic, messages that are valid in every way except a schema version newer than
    this release reads: each must be refused, not half-understood."""
    iid, did = str(uuid.uuid4()), str(uuid.uuid4())
    v = {"schema_version": FUTURE}
    now = "2026-12-03T00:00:00+00:00"
    return {
        "commands": [(iid.encode(), {**start_command("one", instance_id=iid), **v})],
        "task-logs": [(iid.encode(), {"instance_id": iid, "task": "t", "attempt": 1,
                                      "chunk": 0, "lines": [[now, "x"]], "final": True, **v})],
        "worker-heartbeats": [(b"future-w", {"worker_id": "future-w", "group": "default",
                                             "slots": 1, "running": [], "sent_at": now, **v})],
        "schedules": [(did.encode(), {"kind": "schedule", "id": did, "workflow": "one",
                                      "cron": "* * * * *", "enabled": True, "revision": 1,
                                      **v})],
        "tasks.default": [(iid.encode(), {
            "type": "DispatchTask", "message_id": did, "instance_id": iid, "sent_at": now,
            "workflow": "one", "task": "t", "attempt": 1, "dispatch_id": did,
            "task_type": "shell", "worker_group": "default",
            "command": f"touch {tmp}/future-dispatch-ran", **v})],
        "worker-control": [(iid.encode(), {"type": "KillTask", "message_id": did,
                                           "instance_id": iid, "task": "t", "attempt": 1,
                                           "dispatch_id": did, "worker_id": None,
                                           "reason": "stopped", "sent_at": now, **v})],
    }


async def test_a_message_of_a_future_schema_version_is_dead_lettered_with_the_reason(
        stack: Stack, tmp_path):
    """Upgrades: an older release that meets a newer message refuses it clearly (a dead
    letter naming the version) on every topic it reads; nothing of it is acted on."""
    stack.start("scheduler")
    await stack.apply(ONE)
    first = (await stack.request("POST", "/api/v1/workflows/one/runs", json={})).json()
    assert (await stack.wait_run(first["instance_id"], timeout=90))["state"] == "succeeded"
    corpora = _future(str(tmp_path))
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    sent: list[dict[str, Any]] = []
    try:
        for name, messages in corpora.items():
            for key, obj in messages:
                value = json.dumps(obj).encode()
                md = await producer.send_and_wait(f"{stack.prefix}.{name}", value, key=key)
                sent.append({"topic": md.topic, "partition": md.partition,
                             "offset": md.offset})
        after = start_command("one")  # the same topic moves on
        await producer.send_and_wait(f"{stack.prefix}.commands", json.dumps(after).encode(),
                                     key=after["instance_id"].encode())
    finally:
        await producer.stop()
    assert (await stack.wait_run(after["instance_id"], timeout=90))["state"] == "succeeded"

    async def all_dead() -> dict[tuple[str, int, int], dict[str, Any]] | None:
        letters = {_where(d): d for d in await read_all(stack.bootstrap,
                                                       f"{stack.prefix}.dead-letters")}
        return letters if all(_where(s) in letters for s in sent) else None

    letters = await eventually(all_dead, timeout=60, interval=1.0,
                               what="every future-version message in the dead letters")
    for s in sent:
        reason = letters[_where(s)]["reason"]
        assert f"schema_version {FUTURE} is newer than this release reads" in reason, (s, reason)
    future_start = corpora["commands"][0][1]["instance_id"]
    assert (await stack.request("GET", f"/api/v1/runs/{future_start}")).status_code == 404
    assert not (tmp_path / "future-dispatch-ran").exists()
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited:\n{stack.logs()}"


async def test_a_poison_control_message_is_dead_lettered_once_however_many_workers(
        stack: Stack):
    """Every worker reads every message of worker-control; only the one holding
    partition 0 of its group's tasks topic dead-letters a bad one."""
    stack.start("worker")
    await stack.apply(ONE)

    async def two_workers_own_the_partitions() -> bool:
        r = await stack.request("GET", "/api/v1/cluster")
        workers = [w for w in r.json()["workers"] if w["partitions"]] \
            if r.status_code == 200 else []
        owned = sorted(p for w in workers for p in w["partitions"])
        return len(workers) == 2 and owned == [0, 1, 2, 3]
    await eventually(two_workers_own_the_partitions, timeout=90,
                     what="two workers sharing the tasks topic")
    topic = f"{stack.prefix}.worker-control"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    sent = []
    try:
        for p in sorted(await producer.partitions_for(topic)):
            md = await producer.send_and_wait(topic, b"kill? " + str(p).encode(),
                                              key=b"k", partition=p)
            sent.append((p, md.offset))
    finally:
        await producer.stop()

    async def letters() -> list[tuple[int, int]] | None:
        got = [(d["partition"], d["offset"]) for d in await read_all(
            stack.bootstrap, f"{stack.prefix}.dead-letters") if d.get("topic") == topic]
        return got if set(sent) <= set(got) else None
    await eventually(letters, timeout=60, what="the poison control messages")
    await asyncio.sleep(3)  # both readers poll every 200 ms: a second letter would be in
    got = await letters()
    assert got is not None and sorted(got) == sorted(sent), got


async def test_an_event_the_read_models_cannot_take_is_dead_lettered_and_projection_goes_on(
        stack: Stack):
    """An event in the log the read-model fold fails on (here written by hand) used to
    stop the projector at each start, for ever: now it is dead-lettered (the log as its
    source, its global position as the offset), left out of the read models, named by the
    checker, and the runs after it are projected."""
    await stack.apply(ONE)
    first = (await stack.request("POST", "/api/v1/workflows/one/runs", json={})).json()
    assert (await stack.wait_run(first["instance_id"], timeout=90))["state"] == "succeeded"
    bad = str(uuid.uuid4())
    conn = await asyncpg.connect(stack.database_url)
    try:
        position = await conn.fetchval(
            "INSERT INTO shoal.events (instance_id, seq, type, data) VALUES ($1, 1, "
            "'TaskSucceeded', '{\"task\": 5}'::jsonb) RETURNING global_position",
            uuid.UUID(bad))
    finally:
        await conn.close()
    after = (await stack.request("POST", "/api/v1/workflows/one/runs", json={})).json()
    assert (await stack.wait_run(after["instance_id"], timeout=90))["state"] == "succeeded"

    async def letter() -> dict[str, Any] | None:
        return next((d for d in await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
                     if d["topic"] == "shoal.events"), None)
    d = await eventually(letter, timeout=30, interval=1.0, what="the event's dead letter")
    assert (d["service"], d["offset"], d["key"]) == ("projector", position, bad), d
    assert "left out of the read models" in d["reason"], d
    assert json.loads(d["value"])["global_position"] == position
    check = (await stack.request("GET", "/api/v1/check", params={"since": 0})).json()
    assert [(v["instance_id"], v["kind"]) for v in check["violations"]] == [
        (bad, "not-replayable")], check
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited:\n{stack.logs()}"


async def test_a_dispatch_larger_than_the_broker_accepts_fails_its_task_and_holds_up_nothing(
        stack: Stack):
    """A task whose command runs to megabytes (the API accepts definitions up to 8 MiB) used
    to stop the orchestrator's outbox at that row for ever (above the producer's limit), or
    be sent to a broker that refuses it (Apache Kafka) and wedge the idempotent producer:
    every run of the installation waited behind it. Now the record is refused before it is
    sent and dead-lettered, its attempt fails with the reason, and the runs after it go
    on."""
    await stack.apply(ONE)
    # More than SHOAL_KAFKA_MAX_MESSAGE_BYTES (1,000,000): refused by the producer. The
    # embedded broker would take it; Apache Kafka (message.max.bytes 1048588) would refuse
    # it and, refusing, break the idempotent producer's sequence on that partition.
    huge = ": " + "x" * (3 * 1024 * 1024 // 2)
    await stack.apply({"name": "huge", "tasks": [{"name": "big", "command": huge}]})
    big = (await stack.request("POST", "/api/v1/workflows/huge/runs", json={})).json()
    after = [(await stack.request("POST", "/api/v1/workflows/one/runs", json={})).json()
             for _ in range(3)]
    for r in after:
        assert (await stack.wait_run(r["instance_id"], timeout=90))["state"] == "succeeded"
    run = await stack.wait_run(big["instance_id"], timeout=90)
    assert run["state"] == "failed", run
    failed = [e["data"] for e in await stack.events(big["instance_id"])
              if e["type"] == "TaskFailed"]
    assert len(failed) == 1 and failed[0]["worker_id"] == "outbox-relay", failed
    assert "more than the broker accepts" in failed[0]["error"], failed

    tasks, events = f"{stack.prefix}.tasks.default", f"{stack.prefix}.events"

    async def letters() -> list[dict[str, Any]] | None:
        out = [d for d in await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
               if d["service"] == "orchestrator" and d["partition"] == -1]
        return out if any(d["topic"] == tasks for d in out) else None
    # The dispatch, and the envelopes on the events topic of the events that carry the
    # command (the run's submission and the dispatch).
    found = await eventually(letters, timeout=30, interval=1.0, what="the refused records")
    assert sorted(d["topic"] for d in found) == [events, events, tasks], found
    assert all("larger than the broker accepts" in d["reason"] and d["size"] > 1_500_000
               for d in found), found
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited:\n{stack.logs()}"


async def test_a_start_too_large_for_one_record_is_refused_as_such(stack: Stack):
    """Run params within every per-value limit can still add up to more than one Kafka
    record may be: 413 saying so (it was a 503 "try again" after 10 s of retrying a
    refusal that cannot change)."""
    names = [f"p{i}" for i in range(20)]
    await stack.apply({"name": "wide", "params": dict.fromkeys(names, ""),
                       "tasks": [{"name": "t", "command": "true"}]})
    r = await stack.request("POST", "/api/v1/workflows/wide/runs",
                            json={"params": {n: "x" * 60_000 for n in names}})
    assert r.status_code == 413, r.text
    assert "more than one Kafka record may be" in r.text and "nothing was started" in r.text
    ok = await stack.request("POST", "/api/v1/workflows/wide/runs",
                             json={"params": {"p0": "small"}})
    assert (await stack.wait_run(ok.json()["instance_id"], timeout=60))["state"] == "succeeded"
