"""Response bodies: the OpenAPI document's schemas, checked by FastAPI on every answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shoal_api.problems import ProblemItem

# A parameter or output value as stored: text (params given as numbers or booleans are kept
# as their text).
Params = dict[str, str]


class Accepted(BaseModel):
    instance_id: str


class CommandSent(BaseModel):
    instance_id: str
    message_id: str
    command: str


class ForkedFrom(BaseModel):
    instance_id: str
    seq: int


class RunSummary(BaseModel):
    instance_id: str
    workflow: str
    version: int
    state: str
    attempt: int
    priority: str
    params: dict[str, Any]
    schedule_time: str | None
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    failure: str | None
    parent_instance_id: str | None
    forked_from: ForkedFrom | None = Field(
        default=None, description="the run and event (seq) this run was forked from")
    imported: bool = Field(default=False, description="imported from an incident bundle: "
                                                      "read-only, never executed here")
    last_seq: int = Field(default=0, description="the last event (seq) reflected here")
    actor: str | None = Field(default=None, description="who started the run: a token's "
                              "name, `scheduler`, or a Kafka command's actor (`kafka`)")
    last_actor: str | None = Field(default=None, description="who last paused, resumed, "
                                   "stopped, reran or recovered it, or forced a task")
    stopped_by: str | None = Field(default=None, description="who stopped it")


class TaskOut(BaseModel):
    task: str
    attempt: int
    state: str
    worker_id: str | None
    worker_group: str | None
    waiting_for_worker: bool
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    exit_code: int | None
    outputs: dict[str, Any] | None
    error: str | None
    child_instance_id: str | None


class RunDetail(RunSummary):
    resolved_params: dict[str, str] = Field(
        default={}, description="the params with the values the run used: $[...] evaluated "
                                "against its schedule time (else its submission time)")
    allowed_actions: list[str] = Field(
        default=[], description="the controls the run's state accepts now (pause, resume, "
                                "stop, rerun, recover, force-success); none for an imported "
                                "run. A race can still end in 409")
    tasks: list[TaskOut]


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class EventOut(BaseModel):
    global_position: int
    instance_id: str
    seq: int
    type: str
    schema_version: int = Field(description="version of data's shape as written (1 before "
                                            "versioning); see the README's Upgrades")
    data: dict[str, Any]
    causation_id: str | None
    recorded_at: str


class TaskView(BaseModel):
    task: str
    state: str | None = Field(description="null: not reached yet")
    attempt: int | None
    exit_code: int | None
    worker_id: str | None
    outputs: dict[str, str]


class ReplayStep(BaseModel):
    seq: int
    type: str
    recorded_at: str
    state: str
    attempt: int
    tasks: list[TaskView]


class Replay(BaseModel):
    instance_id: str
    steps: list[ReplayStep]


class BatchItem(BaseModel):
    instance_id: str
    status: int = Field(description="202 sent, 404 no such run, 409 refused by its state")
    detail: str
    message_id: str | None = None


class BatchResult(BaseModel):
    action: str
    sent: int
    refused: int
    results: list[BatchItem]


class StatsDay(BaseModel):
    workflow: str
    day: str
    state: str
    runs: int


class StatsDuration(BaseModel):
    workflow: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None


class Stats(BaseModel):
    since: str
    until: str
    by_state: dict[str, int]
    by_day: list[StatsDay]
    durations: list[StatsDuration]


class WorkflowSummary(BaseModel):
    name: str
    latest_version: int
    description: str | None
    updated_at: str
    online: bool


class VersionInfo(BaseModel):
    version: int
    created_at: str


class WorkflowDetail(BaseModel):
    name: str
    version: int
    definition: dict[str, Any]
    online: bool
    versions: list[VersionInfo]


class WorkflowVersion(BaseModel):
    name: str
    version: int
    definition: dict[str, Any]
    created_at: str


class Published(BaseModel):
    name: str
    version: int
    changed: bool
    # Not refusals: e.g. a function task's module this API cannot see on SHOAL_CODE_PATH.
    warnings: list[ProblemItem] = []


class Release(BaseModel):
    name: str
    online: bool


class WorkerOut(BaseModel):
    worker_id: str
    group: str
    host: str | None
    pid: int | None
    slots: int
    running: list[Any]
    stopping: bool
    last_heartbeat: str
    live: bool


class ScheduleOut(BaseModel):
    id: str
    workflow: str
    cron: str
    timezone: str
    start: str | None
    end: str | None
    enabled: bool
    params: dict[str, str]
    catchup: str
    priority: str | None
    revision: int
    created_at: str
    updated_at: str
    workflow_status: Literal["online", "offline", "deleted", "missing"]
    next_fires: list[str]
    created_by: str | None = Field(default=None, description="who created it")
    updated_by: str | None = Field(default=None, description="who changed it last")


class BackfillCreated(BaseModel):
    backfill_id: str
    instance_ids: list[str]
    created: bool


class BackfillPlanned(BaseModel):
    """A dry run's answer: what the backfill would do; nothing was created."""

    dry_run: bool = Field(description="always true: nothing was created")
    workflow: str
    backfill_id: str = Field(description="the id the backfill would get")
    source: Literal["cron", "schedule", "daily", "dates"] = Field(
        description="where the run times come from: the request's cron, the workflow's "
                    "schedule, daily at midnight (neither), or the explicit dates")
    cron: str
    timezone: str
    count: int = Field(description="the number of runs")
    first: str = Field(description="the earliest schedule time (UTC)")
    last: str = Field(description="the latest schedule time (UTC)")
    confirm_above: int = Field(description="clients ask for a confirmation above this count")
    needs_confirmation: bool
    description: str = Field(description="the plan in one sentence")


class BackfillOut(BaseModel):
    backfill_id: str
    workflow: str
    mode: str
    parallelism: int
    reverse: bool
    cron: str
    timezone: str
    params: dict[str, Any]
    state: str
    planned: int
    started: int
    finished: int
    succeeded: int
    failed: int
    active: int
    by_state: dict[str, int]
    first_schedule_time: str
    last_schedule_time: str
    created_at: str
    updated_at: str
    actor: str | None = Field(default=None, description="who requested it (its runs are "
                              "started by `scheduler`)")
    updated_by: str | None = Field(default=None, description="who paused, resumed or "
                                   "cancelled it last")


class BackfillRun(BaseModel):
    index: int
    schedule_time: str
    instance_id: str
    state: str


class BackfillState(BaseModel):
    backfill_id: str
    state: str


class OrchestratorMember(BaseModel):
    member_id: str
    group: str
    host: str | None
    pid: int | None
    partitions: list[int]
    lag: dict[str, int] = Field(description="partition -> messages not yet consumed")
    started_at: str
    last_seen: str


class WorkerMember(BaseModel):
    worker_id: str
    group: str
    host: str | None
    pid: int | None
    slots: int
    busy: int
    partitions: list[int]
    lag: dict[str, int]
    last_heartbeat: str


class GroupLag(BaseModel):
    group: str = Field(description="the Kafka consumer group")
    members: int
    partitions: int
    lag: int


class Cluster(BaseModel):
    orchestrators: list[OrchestratorMember]
    workers: list[WorkerMember]
    groups: list[GroupLag]


class LogPointer(BaseModel):
    task: str
    attempt: int
    chunks: int
    lines: int | None
    complete: bool = Field(description="the attempt's last chunk arrived")
    path: str = Field(description="where the source installation's API serves it")


class BundleDefinition(BaseModel):
    workflow: str
    version: int
    definition: dict[str, Any]


class RunBundle(BaseModel):
    """An incident bundle (schema ``shoal.run-bundle/1``)."""

    model_config = {"populate_by_name": True}

    schema_: str = Field(alias="schema", serialization_alias="schema")
    exported_at: str
    source: dict[str, Any]
    instance_id: str
    definition: BundleDefinition
    run: RunDetail
    events: list[EventOut]
    logs: list[LogPointer]


class Imported(BaseModel):
    instance_id: str
    workflow: str
    version: int
    events: int
    imported: bool


class ViolationOut(BaseModel):
    instance_id: str
    seq: int = Field(description="the event the violation is about")
    kind: str = Field(description="read-model | stuck | succeeded-twice | unclosed-attempt | "
                                  "not-replayable")
    detail: str


class CheckReport(BaseModel):
    since: int
    until: int = Field(description="checked up to this global position (the projector's)")
    instances: int
    violations: list[ViolationOut]
    seconds: float


class Me(BaseModel):
    role: Literal["viewer", "operator", "admin"]
    auth: bool = Field(description="false: the API runs without tokens (everyone is admin)")
    name: str | None = Field(default=None, description="the token's name (the actor the "
                             "audit trail records), `anonymous` without a token")


class TokenOut(BaseModel):
    """A minted API token, without its value."""

    id: str
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: str
    created_by: str | None
    expires_at: str | None
    revoked_at: str | None
    revoked_by: str | None
    state: Literal["active", "expired", "revoked"]


class TokenCreated(BaseModel):
    """A new token: ``token`` is shown this once (only its hash is stored)."""

    id: str
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: str
    expires_at: str | None
    token: str
