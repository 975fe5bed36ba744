"""Turns one Kafka poll batch into one store transaction.

Guarantees (effect, done-marker, then offset): an input's events, its message_id marker
and its outbox rows commit together; the Kafka offset is committed only after that. A
redelivered input is recognised by its message_id and changes nothing. Inputs that cannot
be parsed or applied go to dead letters with the reason and never stop the consumer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shoal.core import versions
from shoal.core.definition import WORKER_TYPES, parse_definition
from shoal.core.errors import MessageInvalid, StreamConflict
from shoal.core.model import (
    ORCHESTRATOR,
    AnyEvent,
    Command,
    Input,
    PauseWorkflow,
    RecoverWorkflow,
    RerunWorkflow,
    ResolvedStart,
    ResumeWorkflow,
    Run,
    StartWorkflow,
    StopWorkflow,
    TaskDispatched,
    TaskFailed,
    TaskFailedEvent,
    TaskForcedSuccess,
    TaskKilled,
    TaskKilledEvent,
    TaskKillRequested,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskSucceededEvent,
    TimerArmed,
    TimerCancelled,
    WakeWorkflow,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowPausing,
    WorkflowQueued,
    WorkflowRestarted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStopped,
    WorkflowSucceeded,
    event_data,
    event_from_data,
)
from shoal.core.snapshot import snapshot_due
from shoal.core.workflow import Context, claim_refusal, decide, evolve
from shoal.infra import codec
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.policy import is_transient, reason_of
from shoal.infra.settings import Settings
from shoal.infra.store import (
    Append,
    Dependencies,
    EventStore,
    OutboxRow,
    SerialOp,
    SuccessRow,
    TimerRow,
    WaitRow,
)

log = logging.getLogger(__name__)
_NS = uuid.UUID("5b0f3f0e-2f5c-4a43-9a0e-8f7c6d1e2a31")


@dataclass(frozen=True, slots=True)
class Record:
    """The parts of a Kafka record the handler needs (keeps aiokafka out of the logic)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class BatchResult:
    appended: int = 0
    dead_letters: list[tuple[Record, str]] = field(default_factory=list)
    duplicates: int = 0


class Cache:
    """Runs in memory by instance id, remembering which partition each came from."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, Run]] = {}

    def get(self, instance_id: str) -> Run | None:
        hit = self._runs.get(instance_id)
        return hit[1] if hit else None

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._runs

    def put(self, instance_id: str, partition: int, run: Run) -> None:
        self._runs[instance_id] = (partition, run)

    def drop(self, instance_ids: Sequence[str]) -> None:
        for i in instance_ids:
            self._runs.pop(i, None)

    def drop_partitions(self, partitions: set[int]) -> None:
        for iid in [i for i, (p, _) in self._runs.items() if p in partitions]:
            del self._runs[iid]

    def runs(self) -> list[Run]:
        return [r for _, r in self._runs.values()]


class BatchHandler:
    """decide/evolve over a batch, with fencing on stream conflicts."""

    MAX_FENCES = 5

    def __init__(self, settings: Settings, store: EventStore, cache: Cache) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache

    async def handle(self, records: Sequence[Record]) -> BatchResult:
        result = BatchResult()
        parsed: list[tuple[Record, Command]] = []
        limit = self.settings.max_command_bytes
        for rec in records:
            if len(rec.value or b"") > limit:
                result.dead_letters.append((rec, f"command of {len(rec.value or b'')} bytes is "
                                                 f"larger than {limit} (SHOAL_MAX_COMMAND_BYTES)"))
                continue
            try:
                parsed.append((rec, codec.decode_command(rec.value)))
            except MessageInvalid as exc:
                result.dead_letters.append((rec, str(exc)))
        for attempt in range(self.MAX_FENCES):
            # Every try asks again which inputs are done: after a fence, another owner may
            # have applied some of them meanwhile, and applying one twice is wrong.
            fresh = await self._fresh(parsed)
            result.duplicates = len(parsed) - len(fresh)
            try:
                dead: list[tuple[Record, str]] = []
                timers: dict[tuple[str, str], TimerRow | None] = {}
                serial: list[SerialOp] = []
                deps = Dependencies([], [], [], self._dependency_met)
                appends, outbox, runs = await self._decide_all(fresh, dead, timers, serial,
                                                               deps)
                every = self.settings.snapshot_every
                snapshots = {a.instance_id: runs[a.instance_id][1] for a in appends
                             if snapshot_due(a.first_seq, a.first_seq + len(a.events) - 1,
                                             every)}
                await self.store.commit(
                    appends, outbox, [t for t in timers.values() if t is not None],
                    [k for k, t in timers.items() if t is None], serial, self._wake, deps,
                    snapshots=list(snapshots.items()))
            except StreamConflict as exc:
                # Another orchestrator (a zombie or a new owner) wrote one of these streams:
                # our view is stale. Drop it, reload from the log, decide again.
                log.warning("stream conflict, fencing (attempt %d): %s", attempt + 1, exc)
                self.cache.drop([c.instance_id for _, c in fresh])
                continue
            for iid, (partition, run) in runs.items():
                if run.state.finished:
                    # A finished run leaves memory: a late input reloads it from the log.
                    self.cache.drop([iid])
                else:
                    self.cache.put(iid, partition, run)
            result.appended = sum(len(a.events) for a in appends)
            result.dead_letters.extend(dead)
            return result
        raise StreamConflict(f"gave up after {self.MAX_FENCES} conflicts in one batch")

    async def _fresh(self, parsed: Sequence[tuple[Record, Command]],
                     ) -> list[tuple[Record, Command]]:
        """The inputs not applied yet (by anyone), each message id once."""
        done = await self.store.processed(c.message_id for _, c in parsed)
        fresh: list[tuple[Record, Command]] = []
        for rec, cmd in parsed:
            if cmd.message_id in done:
                continue
            done.add(cmd.message_id)
            fresh.append((rec, cmd))
        return fresh

    async def load_partitions(self, partitions: Sequence[int], page: int = 500) -> int:
        """Load the unfinished instances of newly assigned partitions, page by page.

        This is DolphinScheduler's failover scan, bounded to what this orchestrator now
        owns: their running attempts get leases, and nothing waits for a next input.
        """
        loaded, after = 0, "00000000-0000-0000-0000-000000000000"
        while True:
            rows = await self.store.pool.fetch(
                "SELECT instance_id, partition FROM shoal.streams WHERE partition = ANY($1) "
                "AND state NOT IN ('succeeded', 'failed', 'stopped') AND instance_id > $2 "
                "ORDER BY instance_id LIMIT $3", list(partitions), after, page)
            if not rows:
                return loaded
            unreadable: dict[str, str] = {}
            states = await self.store.load_runs((str(r["instance_id"]) for r in rows),
                                                unreadable)
            for reason in unreadable.values():
                log.error("not handled here: %s", reason)
            for r in rows:
                iid = str(r["instance_id"])
                run = states.get(iid)
                if run is not None:
                    self.cache.put(iid, r["partition"], run)
                    loaded += 1
            after = str(rows[-1]["instance_id"])

    async def _decide_all(
        self, inputs: Sequence[tuple[Record, Command]], dead: list[tuple[Record, str]],
        timers: dict[tuple[str, str], TimerRow | None], serial: list[SerialOp],
        deps: Dependencies,
    ) -> tuple[list[Append], list[OutboxRow], dict[str, tuple[int, Run]]]:
        missing = {c.instance_id for _, c in inputs if c.instance_id not in self.cache}
        unreadable: dict[str, str] = {}
        loaded = await self.store.load_runs(missing, unreadable)
        working: dict[str, Run | None] = {}         # each instance's state as decided so far
        changed: dict[str, tuple[int, Run]] = {}    # instances this batch wrote: partition, run
        for iid in {c.instance_id for _, c in inputs}:
            working[iid] = self.cache.get(iid) or loaded.get(iid)
        definitions: dict[tuple[str, int | None], tuple[int, Any] | None] = {}
        holders: dict[str, str | None] = {}  # serial workflow -> run holding its slot
        appends: list[Append] = []
        outbox: list[OutboxRow] = []
        for rec, cmd in inputs:
            if cmd.instance_id in unreadable:  # a later release wrote it: refuse, not guess
                dead.append((rec, unreadable[cmd.instance_id]))
                continue
            run = working[cmd.instance_id]
            try:
                inp = await self._resolve(cmd, run, definitions)
                if isinstance(inp, str):
                    dead.append((rec, inp))
                    outbox.extend(self._child_not_started(cmd, inp))
                    continue
                slot_free = await self._slot_free(inp, run, holders)
                decision = decide(run, inp, Context(now=utcnow_iso(), message_id=cmd.message_id,
                                                    slot_free=slot_free, actor=cmd.actor))
                if decision.dead_letter:
                    dead.append((rec, decision.dead_letter))
                    outbox.extend(self._child_not_started(cmd, decision.dead_letter))
                    outbox.extend(self._answer(cmd, None))
                    continue
                new = run
                for e in decision.events:
                    new = evolve(new, e, instance_id=cmd.instance_id)
                outbox.extend(self._answer(cmd, new))
            except Exception as exc:
                if is_transient(exc):
                    raise  # the whole batch is retried: an accepted command is never lost
                log.exception("could not apply %s %s", cmd.type, cmd.message_id,
                              extra={"instance_id": cmd.instance_id,
                                     "causation_id": cmd.message_id})
                dead.append((rec, f"{reason_of(exc)} (applying {cmd.type})"))
                continue
            if not decision.events or new is None:
                continue
            first_seq = (run.seq if run else 0) + 1
            appends.append(Append(cmd.instance_id, first_seq, decision.events, cmd.message_id,
                                  rec.partition, new.state.value))
            outbox.extend(self._effects(cmd.instance_id, first_seq, decision.events,
                                        new, cmd.message_id, timers, deps))
            serial.extend(_serial_ops(new, decision.events, holders))
            working[cmd.instance_id] = new
            changed[cmd.instance_id] = (rec.partition, new)
        return appends, outbox, changed

    async def _slot_free(self, inp: Input, run: Run | None,
                         holders: dict[str, str | None]) -> bool:
        """For inputs that may start a serial workflow's run: is its slot free (or ours)?"""
        if isinstance(inp, ResolvedStart) and run is None:
            definition, iid = inp.definition, inp.command.instance_id
        elif isinstance(inp, RerunWorkflow | RecoverWorkflow) and run is not None:
            definition, iid = run.definition, run.instance_id
        else:
            return True
        if not definition.execution.serial:
            return True
        if definition.name not in holders:
            holders[definition.name] = await self.store.serial_holder(definition.name)
        return holders[definition.name] in (None, iid)

    def _wake(self, instance_id: str) -> OutboxRow:
        cmd = WakeWorkflow(message_id=str(uuid.uuid4()), instance_id=instance_id,
                           sent_at=utcnow_iso())
        return OutboxRow(self.settings.commands_topic, instance_id.encode(),
                         codec.encode_command(cmd))

    async def _resolve(self, cmd: Command, run: Run | None,
                       definitions: dict[tuple[str, int | None], tuple[int, Any] | None],
                       ) -> Input | str:
        """Attach the definition to a StartWorkflow; a string is a dead-letter reason."""
        if not isinstance(cmd, StartWorkflow):
            return cmd
        key = (cmd.workflow, cmd.version)
        if key not in definitions:
            found = await self.store.definition(cmd.workflow, cmd.version)
            definitions[key] = None if found is None else (found[0], parse_definition(found[1]))
        found_def = definitions[key]
        if found_def is None:
            if run is not None:  # already started: the idempotent no-op wins over lookup
                return ResolvedStart(command=cmd, definition=run.definition, version=run.version)
            which = f"version {cmd.version}" if cmd.version else "any version"
            return f"StartWorkflow: unknown workflow '{cmd.workflow}' ({which})"
        version, definition = found_def
        return ResolvedStart(command=cmd, definition=definition, version=version)

    def _effects(self, instance_id: str, first_seq: int, events: Sequence[AnyEvent], run: Run,
                 message_id: str, timers: dict[tuple[str, str], TimerRow | None],
                 deps: Dependencies) -> list[OutboxRow]:
        """Outbox rows for the events; timer changes are netted into ``timers``, waits
        and successes of dependent tasks into ``deps``."""
        key = instance_id.encode()
        now = utcnow_iso()
        rows: list[OutboxRow] = []
        for i, e in enumerate(events):
            rows.append(OutboxRow(self.settings.events_topic, key, codec.dumps({
                "instance_id": instance_id, "seq": first_seq + i, "type": e.type,
                versions.FIELD: versions.EVENTS.of(e.type), "data": event_data(e),
                "causation_id": message_id, "recorded_at": now})))
            if isinstance(e, TaskDispatched) and e.task_type not in WORKER_TYPES:
                rows.extend(self._held(instance_id, run, e, deps))
            elif isinstance(e, TaskDispatched):
                rows.append(self._dispatch_row(instance_id, run, e, now))
            elif isinstance(e, TaskKillRequested) and e.worker_id == ORCHESTRATOR:
                child = (run.tasks[e.task].spec or {}).get("child_instance_id")
                if child:
                    rows.append(self._command(StopWorkflow, child, f"{e.dispatch_id}/stop",
                                              run.stopped_by or ORCHESTRATOR))
            elif isinstance(e, TaskKillRequested):
                rows.append(OutboxRow(self.settings.topic("worker-control"), key, codec.message(
                    "KillTask", {
                        "type": "KillTask", "message_id": f"{e.dispatch_id}/kill/{e.reason}",
                        "instance_id": instance_id, "task": e.task, "attempt": e.attempt,
                        "dispatch_id": e.dispatch_id, "worker_id": e.worker_id,
                        "reason": e.reason, "sent_at": now})))
            elif isinstance(e, TimerArmed):
                timers[(instance_id, e.timer_id)] = TimerRow(instance_id, e.timer_id, e.fire_at)
            elif isinstance(e, TimerCancelled):
                timers[(instance_id, e.timer_id)] = None
            elif isinstance(e, WorkflowPausing | WorkflowPaused | WorkflowResumed):
                rows.extend(self._cascade(run, e, f"{message_id}/{first_seq + i}"))
            if isinstance(e, TaskSucceededEvent | TaskFailedEvent | TaskKilledEvent) and \
                    run.definition.task(e.task).type == "dependent":
                deps.ended.append((instance_id, e.task))
            if isinstance(e, TaskSucceededEvent | TaskForcedSuccess) and not run.dry_run:
                deps.successes.append(SuccessRow(run.workflow, e.task, _business(run),
                                                 instance_id))
            elif isinstance(e, WorkflowSucceeded | WorkflowFailed | WorkflowStopped):
                if isinstance(e, WorkflowSucceeded) and not run.dry_run:
                    deps.successes.append(SuccessRow(run.workflow, "", _business(run),
                                                     instance_id))
                rows.extend(self._tell_parent(run, e))
        return rows

    def _answer(self, cmd: Command, run: Run | None) -> list[OutboxRow]:
        """A claim (a TaskStarted whose worker waits before running it) is answered on
        worker-control, in the same commit as its decision: go ahead, or never run it."""
        if not isinstance(cmd, TaskStarted) or not cmd.claim:
            return []
        refusal = claim_refusal(run, cmd)
        return [OutboxRow(self.settings.topic("worker-control"), cmd.instance_id.encode(),
                          codec.message("StartAnswer", {
            "type": "StartAnswer", "message_id": f"{cmd.message_id}/answer",
            "instance_id": cmd.instance_id, "task": cmd.task, "attempt": cmd.attempt,
            "dispatch_id": cmd.dispatch_id, "worker_id": cmd.worker_id,
            "granted": refusal is None, "reason": refusal, "sent_at": utcnow_iso()}))]

    def _dispatch_row(self, instance_id: str, run: Run, e: TaskDispatched,
                      now: str) -> OutboxRow:
        return OutboxRow(self.settings.tasks_topic(e.worker_group), instance_id.encode(),
                         codec.message("DispatchTask", {
            "type": "DispatchTask", "message_id": e.dispatch_id,
            "instance_id": instance_id, "sent_at": now, "workflow": run.workflow,
            "task": e.task, "attempt": e.attempt, "dispatch_id": e.dispatch_id,
            "task_type": e.task_type, "worker_group": e.worker_group,
            "command": e.command, "env": dict(e.env), "outputs": list(e.outputs),
            "priority": e.priority, "schedule_time": run.schedule_time,
            "spec": dict(e.spec) if e.spec else None,
            # This orchestrator answers claims (StartAnswer): a worker may ask before
            # running it. Releases before 0.2.0 did not; their dispatches say nothing.
            "answers_claims": True}))

    async def unstarted_dispatches(self) -> list[OutboxRow]:
        """After the broker lost data: the dispatch of every worker attempt of the runs
        held here that was dispatched and never reported started, built again from its
        TaskDispatched event (workers run a dispatch id once)."""
        wanted = {(iid, t.dispatch_id): run for iid, run in
                  ((r.instance_id, r) for r in self.cache.runs())
                  for t in run.tasks.values()
                  if t.state is TaskState.DISPATCHED and t.dispatch_id
                  and run.definition.task(t.name).type in WORKER_TYPES}
        if not wanted:
            return []
        rows = await self.store.pool.fetch(
            "SELECT instance_id, type, data::text AS data, schema_version FROM shoal.events "
            "WHERE instance_id = ANY($1::uuid[]) AND type = 'TaskDispatched' "
            "AND data->>'dispatch_id' = ANY($2::text[])",
            list({iid for iid, _ in wanted}), [d for _, d in wanted])
        out = []
        now = utcnow_iso()
        for r in rows:
            e = event_from_data(r["type"], codec.loads(r["data"]), r["schema_version"])
            assert isinstance(e, TaskDispatched)
            iid = str(r["instance_id"])
            out.append(self._dispatch_row(iid, wanted[(iid, e.dispatch_id)], e, now))
        return out

    # ------------------------------------------------------------------ held tasks
    def _command(self, cls: type[StopWorkflow | PauseWorkflow | ResumeWorkflow],
                 instance_id: str, token: str, actor: str) -> OutboxRow:
        """A control command to a child run, on behalf of ``actor`` (the audit trail)."""
        cmd = cls(message_id=str(uuid.uuid5(_NS, token)), instance_id=instance_id,
                  sent_at=utcnow_iso(), actor=actor)
        return OutboxRow(self.settings.commands_topic, instance_id.encode(),
                         codec.encode_command(cmd))

    def _held(self, instance_id: str, run: Run, e: TaskDispatched,
              deps: Dependencies) -> list[OutboxRow]:
        """A task the orchestrator runs: start the child run, or register the wait."""
        spec = e.spec or {}
        if spec.get("error"):
            return []
        if e.task_type == "sub_workflow":
            child = spec["child_instance_id"]
            cmd = StartWorkflow(
                message_id=str(uuid.uuid5(_NS, f"{e.dispatch_id}/start")), instance_id=child,
                sent_at=utcnow_iso(), workflow=spec["workflow"], params=dict(spec["params"]),
                schedule_time=run.schedule_time, actor=run.actor or ORCHESTRATOR,
                parent={"instance_id": instance_id, "task": e.task, "attempt": e.attempt,
                        "dispatch_id": e.dispatch_id})
            return [OutboxRow(self.settings.commands_topic, child.encode(),
                              codec.encode_command(cmd))]
        # One row per alternative window (any of them met ends the wait).
        deps.waits += [WaitRow(
            dispatch_id=e.dispatch_id, instance_id=instance_id, task=e.task,
            attempt=e.attempt, workflow=w["workflow"], upstream_task=w["task"] or "",
            window_start=datetime.fromisoformat(w["window_start"]),
            window_end=datetime.fromisoformat(w["window_end"]), alt=i)
            for i, w in enumerate(spec.get("any_of") or [spec])]
        return []

    def _cascade(self, run: Run, e: AnyEvent, token: str) -> list[OutboxRow]:
        """Pausing or resuming a run pauses or resumes its running child runs."""
        cls = ResumeWorkflow if isinstance(e, WorkflowResumed) else PauseWorkflow
        actor = getattr(e, "actor", None) or ORCHESTRATOR
        return [self._command(cls, child, f"{token}/{t.name}", actor)
                for t in run.tasks.values()
                if t.state is TaskState.RUNNING and t.spec
                and (child := t.spec.get("child_instance_id"))]

    def _tell_parent(self, run: Run, e: AnyEvent) -> list[OutboxRow]:
        """A child run ended: report its outcome to the parent's sub_workflow attempt,
        with the child's outputs (every task's, later tasks winning) on success."""
        parent = run.parent or {}
        if "dispatch_id" not in parent:
            return []
        token = f"{run.instance_id}/{run.attempt}/{e.type}"
        fields: dict[str, Any] = {
                  "message_id": str(uuid.uuid5(_NS, token)),
                  "instance_id": parent["instance_id"], "sent_at": utcnow_iso(),
                  "task": parent["task"], "attempt": int(parent["attempt"]),
                  "dispatch_id": parent["dispatch_id"], "worker_id": ORCHESTRATOR}
        report: TaskSucceeded | TaskFailed | TaskKilled
        if isinstance(e, WorkflowSucceeded):
            outputs: dict[str, str] = {}
            for t in run.definition.tasks:
                if t.name in run.tasks:
                    outputs.update(run.tasks[t.name].outputs)
            report = TaskSucceeded(**fields, exit_code=0, outputs=outputs)
        elif isinstance(e, WorkflowFailed):
            report = TaskFailed(**fields, error=f"sub-workflow run {run.instance_id} of "
                                                f"'{run.workflow}' failed: {e.reason}")
        else:
            report = TaskKilled(**fields, error=f"sub-workflow run {run.instance_id} of "
                                                f"'{run.workflow}' stopped")
        return [OutboxRow(self.settings.commands_topic, parent["instance_id"].encode(),
                          codec.encode_command(report))]

    def _child_not_started(self, cmd: Command, reason: str) -> list[OutboxRow]:
        """A child run that cannot start fails its parent's task instead of hanging it."""
        if not isinstance(cmd, StartWorkflow) or not cmd.parent or \
                "dispatch_id" not in cmd.parent:
            return []
        p = cmd.parent
        report = TaskFailed(
            message_id=str(uuid.uuid5(_NS, f"{cmd.instance_id}/not-started")),
            instance_id=p["instance_id"], sent_at=utcnow_iso(), task=p["task"],
            attempt=int(p["attempt"]), dispatch_id=p["dispatch_id"], worker_id=ORCHESTRATOR,
            error=f"sub-workflow could not start: {reason}")
        return [OutboxRow(self.settings.commands_topic, p["instance_id"].encode(),
                          codec.encode_command(report))]

    def _dependency_met(self, w: WaitRow) -> OutboxRow:
        report = TaskSucceeded(
            message_id=str(uuid.uuid5(_NS, f"{w.dispatch_id}/met")), instance_id=w.instance_id,
            sent_at=utcnow_iso(), task=w.task, attempt=w.attempt, dispatch_id=w.dispatch_id,
            worker_id=ORCHESTRATOR, exit_code=0)
        return OutboxRow(self.settings.commands_topic, w.instance_id.encode(),
                         codec.encode_command(report))


def _business(run: Run) -> datetime:
    """The run's business time as wall-clock time in its own offset."""
    stamp = run.schedule_time or run.submitted_at or "1970-01-01T00:00:00"
    return datetime.fromisoformat(stamp).replace(tzinfo=None)


def _serial_ops(run: Run, events: Sequence[AnyEvent],
                holders: dict[str, str | None]) -> list[SerialOp]:
    """Slot operations a serial workflow's events imply (and the batch's view of holders)."""
    execution = run.definition.execution
    if not execution.serial:
        return []
    ops: list[SerialOp] = []

    def op(kind: str) -> SerialOp:
        return SerialOp(op=kind, workflow=run.workflow, instance_id=run.instance_id,
                        mode=execution.value, priority=run.priority.rank)

    for e in events:
        if isinstance(e, WorkflowStarted | WorkflowRestarted):
            ops.append(op("run"))
            holders[run.workflow] = run.instance_id
        elif isinstance(e, WorkflowQueued):
            ops.append(op("wait"))
        elif isinstance(e, WorkflowSucceeded | WorkflowFailed | WorkflowStopped):
            ops.append(op("release"))
            if holders.get(run.workflow) == run.instance_id:
                # The commit hands the slot to the next waiting run; a start later in
                # this batch queues, and is woken at once if nobody else was waiting.
                holders[run.workflow] = "released in this batch"
    return ops
