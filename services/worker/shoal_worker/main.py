"""Worker entry point: consumes ``<prefix>.tasks.<group>`` with a bounded number of slots.

Dispatches are fetched into a small buffer (``SHOAL_WORKER_PREFETCH``) and started most
urgent first (workflow priority, then task priority, then arrival). A partition's offset
is committed only below its oldest dispatch not yet claimed, so a worker that dies
loses nothing it had not started: those dispatches are redelivered to another worker.
When slots and buffer are full the worker pauses its partitions instead of rejecting.

One execution per attempt: nothing of an attempt runs before its claim (its TaskStarted)
is on the broker. Any later claim of the same attempt (a redelivery to another worker, a
dispatch the outbox sent twice) comes after it on the instance's partition, and the
orchestrator refuses it. A worker that may be such a later claimant (the dispatch was on
the broker before this worker owned its partition) waits for the orchestrator's answer
before running it. An attempt's end report is journaled (see ``shoal_worker.orphans``)
until the broker has it, so a worker killed in between has its successor send it.

Kills arrive on ``<prefix>.worker-control``, which every worker reads in full (assigned,
not in a group). A kill ends the attempt's whole process group (SIGTERM, then SIGKILL
after a grace period) and is confirmed with a TaskKilled report.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from shoal.core.model import TaskFailed, TaskKilled, TaskStarted, TaskSucceeded
from shoal.infra import codec, kafka, metrics, policy
from shoal.infra.lifecycle import run_service, setup_logging, utcnow_iso
from shoal.infra.settings import Settings
from shoal_worker.executor import Attempt, InLoop, Outcome, describe_exit
from shoal_worker.inloop import run_http, run_sql
from shoal_worker.logship import LogShipper
from shoal_worker.orphans import TaskGroups
from shoal_worker.prepare import hide_environment
from shoal_worker.warm import WarmPython

log = logging.getLogger("shoal.worker")
_REPORT_NS = uuid.UUID("1b6c7e0a-53a2-4c55-8f4e-2f1d8c3e9b21")
RESEND_WINDOW = 120.0  # seconds of reports sent again after the broker lost data
CLAIM_AGAIN = 10.0  # seconds a claim waits for its answer before it is sent again


def report_id(dispatch_id: str, kind: str, worker_id: str) -> str:
    """Deterministic: a re-run of the same dispatch on this worker produces the same report
    ids. Another worker's reports of the same dispatch (a redelivery) have other ids, so the
    orchestrator sees them (and kills that worker's process) instead of taking them for
    duplicates of the holder's."""
    return str(uuid.uuid5(_REPORT_NS, f"{dispatch_id}/{worker_id}/{kind}"))


@dataclass(order=True)
class Pending:
    priority: int
    seq: int
    tp: TopicPartition = field(compare=False)
    offset: int = field(compare=False)
    dispatch: dict[str, Any] = field(compare=False)
    received_at: float = field(compare=False, default=0.0)
    ask: bool = field(compare=False, default=True)  # wait for the orchestrator's answer


class Worker:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.running: dict[str, Attempt] = {}
        self.shippers: dict[str, LogShipper] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.base_env = dict(os.environ)
        self.queue: list[Pending] = []
        self.unstarted: dict[TopicPartition, set[int]] = {}
        self.fetched: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self._seq = itertools.count()
        self.partitions: set[int] = set()  # of the group's tasks topic, owned now
        # Since when (wall clock) each partition is ours without a break: a dispatch sent
        # before that may have been claimed by its previous owner.
        self.owned_since: dict[TopicPartition, float] = {}
        self.answers: dict[str, asyncio.Future[str | None]] = {}  # claims waiting
        self.control_ready = asyncio.Event()  # reading worker-control (answers, kills)
        self.lag: dict[int, int] = {}
        self.slot_freed = asyncio.Event()
        self.polls = 0  # getmany calls (a busy worker keeps polling)
        self.consumer: AIOKafkaConsumer | None = None
        self._committing: asyncio.Task[None] | None = None
        self.datasources = settings.datasource_urls()
        self.code_path = settings.code_paths()
        if self.code_path:  # absolute, for the warm runner's preloads as for children
            self.base_env["SHOAL_CODE_PATH"] = ":".join(self.code_path)
        self.warm = WarmPython.for_worker(self.base_env, run_as=settings.worker_run_as)
        # Reports sent lately, to send again if the broker loses them; dispatch ids queued
        # or finished lately, so a dispatch re-issued after such a loss runs once.
        self.sent: collections.deque[tuple[float, bytes, bytes]] = collections.deque(
            maxlen=20_000)
        self.queued: set[str] = set()
        self.loss = kafka.LossWatch()
        self.dead = policy.DeadLetters(producer, settings.dead_letters_topic, "worker")
        self.groups = TaskGroups(settings.data_dir, self.worker_id, compose=self._end_of)
        self.finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    # ------------------------------------------------------------------ dispatches
    async def consume(self, stop: asyncio.Event) -> None:
        s = self.settings
        topic = s.tasks_topic(s.worker_group)
        self.groups.start()
        await self._send_inherited(dict(self.groups.pending))
        await kafka.ensure_topics(s, [topic, s.commands_topic, s.dead_letters_topic,
                                      s.topic("worker-control")])
        # An answer to a claim published before the control reader took its position at
        # the end would be missed (and the claim asked again 10 s later).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.control_ready.wait(), 30.0)
        consumer = kafka.consumer(s, group_id=f"{s.topic_prefix}.workers.{s.worker_group}")
        revoke = _Revoke(self)
        consumer.subscribe([topic], listener=revoke)
        revoke.consumer = self.consumer = consumer
        await consumer.start()
        pacer = kafka.FetchPacer(consumer, s)
        log.info("worker %s serving group %s with %d slots", self.worker_id, s.worker_group,
                 s.worker_slots)
        warm_up = asyncio.create_task(self._warm_up())
        metrics.WORKER_SLOTS.labels(s.worker_group).set(s.worker_slots)
        lag = asyncio.create_task(metrics.sample_lag(
            consumer, f"{s.topic_prefix}.workers.{s.worker_group}", stop, into=self.lag))
        try:
            while not stop.is_set():
                room = s.worker_slots + s.worker_prefetch - len(self.running) - len(self.queue)
                # A busy worker keeps polling, with its partitions paused: a consumer that
                # stops calling getmany leaves the group after max_poll_interval, and its
                # queued dispatches would go to another worker while still held here.
                if room <= 0:
                    consumer.pause(*consumer.assignment())
                else:
                    consumer.resume(*consumer.paused())
                batch = await consumer.getmany(timeout_ms=100, max_records=max(room, 1))
                self.polls += 1
                pacer.saw(len(batch))
                lost = self.loss.lost(batch)
                if lost:
                    await self._after_loss(lost)
                for tp, msgs in batch.items():
                    for m in msgs:
                        await self._buffer(tp, m.offset, m.value, m.key)
                await self._start_ready()
                await self._commit(consumer)
        finally:
            lag.cancel()
            warm_up.cancel()
            await self._commit(consumer)
            await kafka.stop_consumer(consumer)
            await self._drain()
            await self.warm.close()
            self.groups.close()

    @staticmethod
    def _end_of(ended: dict[str, Any], code: int) -> tuple[str, str, str]:
        """The end report of a dead worker's shell attempt whose exit status the shell
        wrote: what that worker would have sent (same message id)."""
        fields = {"message_id": report_id(ended["dispatch_id"], "finished", ended["worker_id"]),
                  "instance_id": ended["instance_id"], "sent_at": utcnow_iso(),
                  "task": ended["task"], "attempt": int(ended["attempt"]),
                  "dispatch_id": ended["dispatch_id"], "worker_id": ended["worker_id"]}
        end: TaskSucceeded | TaskFailed = (
            TaskSucceeded(**fields, exit_code=0) if code == 0 else
            TaskFailed(**fields, exit_code=code, error=describe_exit(code)))
        return end.message_id, end.instance_id, codec.encode_command(end).decode()

    async def _send_inherited(self, reports: dict[str, tuple[str, str]]) -> None:
        """End reports a worker that died here journaled and never got onto the broker:
        sent now, as that worker's (same message ids, so a report it did send counts
        once), before its attempts' leases lapse and they are retried."""
        if reports:
            log.warning("sending %d end reports of a worker that died here", len(reports))

        async def send(message_id: str, key: str, value: str) -> None:
            log.info("sending a dead worker's end report %s", message_id,
                     extra={"instance_id": key})
            await kafka.send_reliably(self.producer, self.settings.commands_topic,
                                      value.encode(), key.encode())
            self.groups.reported(message_id)
        # All at once: they race the dead worker's leases.
        await asyncio.gather(*(send(m, k, v) for m, (k, v) in reports.items()))

    async def siblings(self, stop: asyncio.Event) -> None:
        """Twice a second: the journaled end reports of a worker sharing the data
        directory that died (see ``_send_inherited``); its leases lapse within
        SHOAL_LEASE_TIMEOUT, often sooner than a successor starts."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if self.groups.guard is None:
                continue  # not started yet: its start adopts them
            try:
                await self._send_inherited(self.groups.adopt())
            except (OSError, KafkaError) as exc:
                log.warning("could not send a dead worker's end reports: %r", exc)

    async def _after_loss(self, lost: list[TopicPartition]) -> None:
        """The broker lost data (its topics were recreated): offsets of the lost
        partitions mean nothing now, and reports it had acknowledged may be gone — send
        the recent ones again (their message ids make that harmless)."""
        for tp in lost:
            self.unstarted.pop(tp, None)
            self.fetched.pop(tp, None)
            self.committed.pop(tp, None)
        horizon = time.monotonic() - RESEND_WINDOW
        again = [(v, k) for at, v, k in self.sent if at >= horizon]
        log.warning("the broker lost partitions %s of the tasks topic; sending %d recent "
                    "reports again", sorted(tp.partition for tp in lost), len(again))
        for value, key in again:
            await kafka.send_reliably(self.producer, self.settings.commands_topic, value, key)

    def _remember(self, cmd: TaskStarted | TaskSucceeded | TaskFailed | TaskKilled) -> bytes:
        value = codec.encode_command(cmd)
        now = time.monotonic()
        while self.sent and self.sent[0][0] < now - RESEND_WINDOW:
            self.sent.popleft()  # only the last RESEND_WINDOW seconds are ever sent again
        self.sent.append((now, value, cmd.instance_id.encode()))
        return value

    async def _warm_up(self) -> None:
        """Start the warm Python runner now, so the first Python task does not wait."""
        try:
            await self.warm.start()
        except Exception as exc:  # noqa: BLE001 - the first Python attempt retries it
            log.warning("warm Python runner did not start: %r", exc)

    async def _buffer(self, tp: TopicPartition, offset: int, value: bytes | None,
                      key: bytes | None) -> None:
        self.fetched[tp] = offset + 1
        try:
            d = codec.accept("tasks", "DispatchTask", codec.decode_object(value, "a dispatch"))
        except Exception as exc:  # noqa: BLE001 - the error policy decides
            await self.dead.send(f"invalid dispatch: {policy.reason_of(exc)}", topic=tp.topic,
                                 partition=tp.partition, offset=offset, key=key, value=value)
            return
        if d["dispatch_id"] in self.queued or d["dispatch_id"] in self.running or \
                d["dispatch_id"] in self.finished:
            # Sent again (by an orchestrator that died between the outbox relay's send and
            # delete, or after a broker loss) or redelivered: already here.
            return
        too_old = self._too_old(d)
        if too_old:
            # Replayed (expired offsets) or held up past any retry interval: never run
            # blind. The report fails the attempt if it is still current; else it is
            # rejected as stale and changes nothing.
            log.warning("refusing dispatch %s of %s: %s", d["dispatch_id"], d["task"], too_old,
                        extra={"instance_id": d["instance_id"], "task": d["task"],
                               "dispatch_id": d["dispatch_id"]})
            self.finished[d["dispatch_id"]] = None
            await self._report(TaskFailed(**self._fields(d, "refused"), error=too_old))
            return
        self.queued.add(d["dispatch_id"])
        self.unstarted.setdefault(tp, set()).add(offset)
        heapq.heappush(self.queue, Pending(int(d.get("priority", 0)), next(self._seq), tp,
                                           offset, d, time.monotonic(),
                                           ask=self._may_be_held(tp, d)))

    def _may_be_held(self, tp: TopicPartition, d: dict[str, Any]) -> bool:
        """Was the dispatch on the broker before this worker owned its partition? Then
        its previous owner may have claimed (and run) it: ask before running it. Judged by
        its sent_at, allowing SHOAL_WORKER_CLAIM_SKEW seconds of clock difference. Only
        an orchestrator that answers claims (0.2.0 on) says so in its dispatches; one of an
        earlier release would leave the question unanswered, so its dispatches run as that
        release ran them (during a rolling upgrade)."""
        if not d.get("answers_claims"):
            return False
        since = self.owned_since.get(tp)
        try:
            sent = datetime.fromisoformat(d["sent_at"])
        except ValueError:
            return True
        if since is None:
            return True
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        return sent.timestamp() < since + self.settings.worker_claim_skew

    def _too_old(self, d: dict[str, Any]) -> str | None:
        """Why the dispatch is past SHOAL_DISPATCH_HORIZON_S, or None."""
        horizon = self.settings.dispatch_horizon_s
        if horizon <= 0:
            return None
        try:
            sent = datetime.fromisoformat(d["sent_at"])
        except ValueError:
            return f"refused: dispatch sent_at {d['sent_at']!r} is not a timestamp"
        if sent.tzinfo is None:
            sent = sent.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - sent).total_seconds()
        if age <= horizon:
            return None
        return (f"refused: dispatch sent at {d['sent_at']} is {age:.0f} s old, older than "
                f"SHOAL_DISPATCH_HORIZON_S ({horizon:g} s)")

    async def _start_ready(self) -> None:
        while self.queue and len(self.running) < self.settings.worker_slots:
            p = heapq.heappop(self.queue)
            d = p.dispatch
            self.queued.discard(d["dispatch_id"])
            if d["dispatch_id"] in self.running or d["dispatch_id"] in self.finished:
                self.unstarted.get(p.tp, set()).discard(p.offset)
                continue  # a second copy, queued while the first ran here
            shipper = LogShipper(self.producer, self.settings.topic("task-logs"), d,
                                 limit=self.settings.kafka_max_message_bytes)
            # The dispatch's offset is committed only once its claim is on the broker: a
            # worker killed before that leaves it to be redelivered, not a dispatched
            # attempt nobody runs (there is no lease before a start).
            claim = _Claim(self, TaskStarted(**self._fields(d, "started"), claim=p.ask),
                           on_sent=functools.partial(self._started, p.tp, p.offset))
            attempt = Attempt(d, self.settings.data_dir, self.base_env, on_lines=shipper.add,
                              keep_workdir=self.settings.worker_keep_workdir,
                              run_as=self.settings.worker_run_as, in_loop=self._in_loop(d),
                              warm=self.warm if self.settings.worker_warm_python or
                              "function" in (d.get("spec") or {}) else None,
                              code_path=self.code_path, received_at=p.received_at,
                              groups=self.groups, gate=claim.granted)
            self.shippers[d["dispatch_id"]] = shipper
            self.running[d["dispatch_id"]] = attempt
            metrics.WORKER_BUSY.labels(self.settings.worker_group).set(len(self.running))
            t = asyncio.create_task(self._run(attempt, claim))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    def _started(self, tp: TopicPartition, offset: int) -> None:
        """The attempt's claim is on the broker: its dispatch's offset may be committed,
        at once (not at the loop's next turn): the shorter the time a reported dispatch's
        offset stays uncommitted, the fewer finished attempts a worker's death hands to
        another worker to run again."""
        self.unstarted.get(tp, set()).discard(offset)
        if self.consumer is not None and self._committing is None:
            self._committing = asyncio.create_task(self._commit_now(self.consumer))

    async def _commit_now(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self._commit(consumer)
        except Exception as exc:  # noqa: BLE001 - the loop's next commit tries again
            log.warning("offset commit failed: %r", exc)
        finally:
            self._committing = None

    def _in_loop(self, d: dict[str, Any]) -> InLoop | None:
        """sql and http attempts run in this event loop (still one slot each), given
        their spec as rendered at the attempt's start."""
        if d["task_type"] == "sql":
            return lambda say, spec: run_sql(spec, d.get("outputs", []), say, self.datasources)
        if d["task_type"] == "http":
            return lambda say, spec: run_http(spec, say, self.settings.worker_http_timeout)
        return None

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = {}
        for tp, upto in self.fetched.items():
            pending = self.unstarted.get(tp)
            target = min(pending) if pending else upto
            if self.committed.get(tp) != target:
                offsets[tp] = target
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self.committed.update(offsets)
            self.loss.committed_up_to(offsets)
        except KafkaError as exc:  # a rebalance: the new owner re-reads from the last commit
            log.warning("offset commit failed: %r", exc)

    def forget(self, tps: list[TopicPartition]) -> None:
        """Revoked partitions: unstarted dispatches go back to Kafka for the new owner."""
        gone = set(tps)
        self.queued -= {p.dispatch["dispatch_id"] for p in self.queue if p.tp in gone}
        self.queue = [p for p in self.queue if p.tp not in gone]
        heapq.heapify(self.queue)
        for tp in gone:
            self.unstarted.pop(tp, None)
            self.fetched.pop(tp, None)
            self.committed.pop(tp, None)

    async def hand_over(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                        wait: float = 2.0) -> None:
        """Before revoked partitions go: attempts started here must not be redelivered to
        the next owner (it would run them a second time). Queued dispatches are given
        back; the starts of those already running are waited for (they are on the broker
        within the start report delay), and the offsets up to the first dispatch not
        started here are committed."""
        gone = set(tps)
        queued: dict[TopicPartition, set[int]] = {}
        for p in self.queue:
            if p.tp in gone:
                queued.setdefault(p.tp, set()).add(p.offset)
        self.forget_queued(gone)

        def starting(tp: TopicPartition) -> set[int]:
            return self.unstarted.get(tp, set()) - queued.get(tp, set())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # A start report has no event to wait on: poll.
        while any(starting(tp) for tp in gone) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        offsets = {}
        for tp in gone:
            if tp not in self.fetched:
                continue
            pending = self.unstarted.get(tp)  # queued ones stay pending: the next owner's
            target = min(pending) if pending else self.fetched[tp]
            if self.committed.get(tp) != target:
                offsets[tp] = target
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                log.warning("offset commit at hand-over failed: %r", exc)
        self.forget(tps)

    def forget_queued(self, gone: set[TopicPartition]) -> None:
        self.queued -= {p.dispatch["dispatch_id"] for p in self.queue if p.tp in gone}
        self.queue = [p for p in self.queue if p.tp not in gone]
        heapq.heapify(self.queue)

    async def _run(self, attempt: Attempt, claim: _Claim) -> None:
        d = attempt.dispatch
        try:
            try:
                outcome = await attempt.run()
            except Exception as exc:  # the attempt must still be reported
                log.exception("attempt %s of %s failed in the worker", d["attempt"], d["task"],
                              extra={"instance_id": d["instance_id"], "task": d["task"],
                                     "attempt": d["attempt"], "dispatch_id": d["dispatch_id"]})
                outcome = Outcome(exit_code=None, error=f"worker error: {exc!r}")
            if outcome.refused:
                # Another worker claimed it first (or it is over): it never ran here, and
                # there is nothing to report.
                log.info("not running %s attempt %s: %s", d["task"], d["attempt"],
                         outcome.error, extra={"instance_id": d["instance_id"],
                                               "task": d["task"], "attempt": d["attempt"],
                                               "dispatch_id": d["dispatch_id"]})
                return
            fields = self._fields(d, "finished")
            metrics.ATTEMPTS.labels(self.settings.worker_group, "killed" if outcome.killed
                                    else "succeeded" if outcome.exit_code == 0
                                    else "failed").inc()
            end: TaskSucceeded | TaskFailed | TaskKilled
            if outcome.killed:
                end = TaskKilled(**fields, exit_code=outcome.exit_code, error=outcome.error)
            elif outcome.exit_code == 0:
                end = TaskSucceeded(**fields, exit_code=0, outputs=outcome.outputs)
            else:
                end = TaskFailed(**fields, exit_code=outcome.exit_code, error=outcome.error)
            # Journaled before anything else can delay it (shipping the log's end).
            self.groups.finish(attempt.pid, d["dispatch_id"], end.message_id,
                               end.instance_id.encode(), codec.encode_command(end))
            try:
                await self.shippers[d["dispatch_id"]].close()
            except KafkaError as exc:
                log.warning("could not ship the end of the log: %r", exc)
            await claim.then(end)
            self.groups.reported(end.message_id)
        finally:
            claim.close()
            self.groups.remove(attempt.pid, d["dispatch_id"])
            self.running.pop(d["dispatch_id"], None)
            self.finished[d["dispatch_id"]] = None
            while len(self.finished) > 10_000:
                self.finished.popitem(last=False)
            self.shippers.pop(d["dispatch_id"], None)
            metrics.WORKER_BUSY.labels(self.settings.worker_group).set(len(self.running))
            self.slot_freed.set()

    # ------------------------------------------------------------------ kills
    async def control(self, stop: asyncio.Event) -> None:
        """Read every partition of worker-control from its end (kills are for now)."""
        consumer = await kafka.tail(self.settings, self.settings.topic("worker-control"))
        self.control_ready.set()
        pacer = kafka.FetchPacer(consumer, self.settings)
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                pacer.saw(len(batch))
                for msgs in batch.values():
                    for m in msgs:
                        await self._on_control(m.value, (m.topic, m.partition, m.offset),
                                               m.key)
        finally:
            await consumer.stop()

    async def _on_control(self, value: bytes | None, where: tuple[str, int, int] = ("", 0, 0),
                          key: bytes | None = None) -> None:
        try:
            msg = codec.decode_object(value, "a control message")
            msg = codec.accept("topics", "StartAnswer" if msg.get("type") == "StartAnswer"
                               else "KillTask", msg)
        except Exception as exc:  # noqa: BLE001 - the error policy decides
            topic, partition, offset = where
            reason = f"invalid control message: {policy.reason_of(exc)}"
            if 0 in self.partitions:
                # Every worker reads every control message: one dead letter is enough, by
                # the worker that holds partition 0 of its group's tasks topic.
                await self.dead.send(reason, topic=topic, partition=partition,
                                     offset=offset, key=key, value=value)
            else:
                log.warning("%s (%s:%d@%d; dead-lettered by the worker holding partition 0 "
                            "of the group's tasks topic)", reason, topic, partition, offset)
            return
        if msg["type"] == "StartAnswer":
            waiting = self.answers.get(msg["dispatch_id"])
            if msg["worker_id"] == self.worker_id and waiting and not waiting.done():
                waiting.set_result(None if msg["granted"] else
                                   f"claim refused: {msg.get('reason') or 'no reason given'}")
            return
        target = msg.get("worker_id")
        if target not in (None, self.worker_id):
            return
        dispatch_id = msg["dispatch_id"]
        attempt = self.running.get(dispatch_id)
        if attempt is not None:
            log.info("killing %s attempt %s (%s)", msg["task"], msg["attempt"], msg["reason"],
                     extra={"instance_id": msg.get("instance_id"), "task": msg["task"],
                            "attempt": msg["attempt"], "dispatch_id": dispatch_id})
            t = asyncio.create_task(attempt.kill(msg["reason"], self.settings.worker_kill_grace))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
            return
        queued = [p for p in self.queue if p.dispatch["dispatch_id"] == dispatch_id]
        if queued:  # fetched, not started: never start it
            self.queue = [p for p in self.queue if p.dispatch["dispatch_id"] != dispatch_id]
            heapq.heapify(self.queue)
            for p in queued:
                self.unstarted.get(p.tp, set()).discard(p.offset)
            self.queued.discard(dispatch_id)
            self.finished[dispatch_id] = None  # a redelivery is not started either
            return
        if target == self.worker_id:  # addressed to us and we do not have it: say so
            d = {"instance_id": msg["instance_id"], "task": msg["task"],
                 "attempt": msg["attempt"], "dispatch_id": dispatch_id}
            await self._report(TaskKilled(**self._fields(d, f"kill/{msg['reason']}"),
                                          error="not running on this worker"))

    # ------------------------------------------------------------------ heartbeats
    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Tell the orchestrators we live and what we run; go on while draining."""
        s = self.settings
        topic = s.topic("worker-heartbeats")
        while not (stop.is_set() and not self.running):
            beat = {"worker_id": self.worker_id, "group": s.worker_group,
                    "host": socket.gethostname(), "pid": os.getpid(), "slots": s.worker_slots,
                    "running": [{k: a.dispatch[k] for k in
                                 ("instance_id", "task", "attempt", "dispatch_id")}
                                for a in self.running.values() if a.cleared],
                    "sent_at": utcnow_iso(), "stopping": stop.is_set(),
                    "partitions": sorted(self.partitions),
                    "lag": {str(p): n for p, n in sorted(self.lag.items())}}
            try:
                await self.producer.send_and_wait(topic, codec.message("Heartbeat", beat),
                                                  key=self.worker_id.encode())
            except KafkaError as exc:
                log.warning("heartbeat not sent: %r", exc)
            if stop.is_set():  # draining: keep the leases of what still runs alive
                await asyncio.sleep(min(s.worker_heartbeat_interval, 0.5))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), s.worker_heartbeat_interval)

    # ------------------------------------------------------------------ reports
    def _fields(self, d: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"message_id": report_id(d["dispatch_id"], kind, self.worker_id),
                "instance_id": d["instance_id"], "sent_at": utcnow_iso(), "task": d["task"],
                "attempt": d["attempt"], "dispatch_id": d["dispatch_id"],
                "worker_id": self.worker_id}

    async def _report(self, cmd: TaskStarted | TaskSucceeded | TaskFailed | TaskKilled) -> None:
        # Reports carry deterministic message ids, so a retried send is harmless; if the
        # broker stays away past the retry window the lease machinery recovers the attempt.
        await kafka.send_reliably(self.producer, self.settings.commands_topic,
                                  self._remember(cmd), cmd.instance_id.encode())

    async def _drain(self, grace: float = 25.0) -> None:
        """On shutdown let running attempts finish, then kill what is left and report it."""
        if not self.running:
            return
        log.info("waiting up to %.0fs for %d running tasks", grace, len(self.running))
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        if pending:
            for a in list(self.running.values()):
                await a.kill("worker shutting down", 2.0)
            await asyncio.wait(pending, timeout=10)


class _Claim:
    """An attempt's TaskStarted: its claim, sent at once. The attempt may run once the
    claim is on the broker and, when the worker asks (``cmd.claim``), once the
    orchestrator granted it; its end is reported after the claim."""

    def __init__(self, worker: Worker, cmd: TaskStarted,
                 on_sent: Callable[[], None] = lambda: None) -> None:
        self.worker = worker
        self.cmd = cmd
        self.on_sent = on_sent
        self.answer: asyncio.Future[str | None] | None = None
        if cmd.claim:
            self.answer = asyncio.get_running_loop().create_future()
            worker.answers[cmd.dispatch_id] = self.answer
        self.task = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while True:
            try:
                await self.worker._report(self.cmd)
                break
            except KafkaError as exc:
                # Not on the broker: nothing runs, and the dispatch's offset stays
                # uncommitted (a worker dying now leaves it to be redelivered).
                log.warning("could not send the claim of %s: %r; trying again",
                            self.cmd.task, exc)
                await asyncio.sleep(1.0)
        self.on_sent()

    async def granted(self) -> str | None:
        """None once the attempt may run; else why it must not."""
        await asyncio.shield(self.task)
        if self.answer is None:
            return None
        for n in itertools.count(1):
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(self.answer), CLAIM_AGAIN)
            # No answer yet (the orchestrator is away, or the answer was lost): ask again,
            # with a new message id; the orchestrator answers from the attempt's state.
            again = dataclasses.replace(self.cmd, sent_at=utcnow_iso(), message_id=report_id(
                self.cmd.dispatch_id, f"started/{n}", self.worker.worker_id))
            with contextlib.suppress(KafkaError):
                await self.worker._report(again)
        raise AssertionError("unreachable")

    async def then(self, end: TaskSucceeded | TaskFailed | TaskKilled) -> None:
        await asyncio.shield(self.task)
        await self.worker._report(end)

    def close(self) -> None:
        if self.answer is not None and \
                self.worker.answers.get(self.cmd.dispatch_id) is self.answer:
            del self.worker.answers[self.cmd.dispatch_id]


class _Revoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.consumer: AIOKafkaConsumer | None = None
        self.revoked: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.partitions -= {tp.partition for tp in revoked}
        self.revoked = set(revoked)
        if self.consumer is not None:
            await self.worker.hand_over(self.consumer, list(revoked))
        else:
            self.worker.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.worker.partitions |= {tp.partition for tp in assigned}
        # A partition revoked and given back in the same rebalance was nobody else's.
        now, since = time.time(), self.worker.owned_since
        for tp in set(since) - set(assigned):
            del since[tp]
        for tp in assigned:
            if tp not in since or tp not in self.revoked:
                since[tp] = now
        self.revoked = set()


async def main(settings: Settings) -> None:
    setup_logging(settings.log_level, "worker", settings.log_format)
    producer = await kafka.start_producer(settings)
    worker = Worker(settings, producer)
    try:
        topics = [settings.tasks_topic(settings.worker_group), settings.commands_topic,
                  settings.dead_letters_topic, settings.topic("worker-control"),
                  settings.topic("worker-heartbeats"), settings.topic("task-logs")]
        await run_service("worker", [worker.consume, worker.control, worker.heartbeat,
                                     worker.siblings,
                                     lambda stop: kafka.keep_topics(settings, topics, stop),
                                     lambda stop: metrics.serve(settings, "worker", stop)],
                          grace=45.0)
    finally:
        await producer.stop()


def run() -> None:
    hide_environment()
    asyncio.run(main(Settings()))
