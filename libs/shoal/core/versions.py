"""Schema versions of everything Shoal writes down or sends: events and Kafka messages.

The log outlives every release, and during a rolling upgrade services of two releases
share topics and a database. So each event and each message carries the version of its
shape (``schema_version``; an integer from 1). Releases before versioning (0.1.0 and
earlier) wrote none: their shape is version 1, and a missing version reads as 1.

Reading goes through :func:`upcast`: a pure chain of upcasters, one per (type, version),
turns any earlier shape into the one this release decides on. A version newer than this
release knows is refused (:class:`FutureVersion`): the input is dead-lettered with the
reason, or, for an event in the log, the run is left alone rather than folded wrongly.

When a type's shape changes in a way an older reader would misread (a renamed field, a
field whose meaning changes, a removed field), its version goes up by one and an
upcaster from the previous version is added here; none is ever removed. A new optional
field an older reader may ignore is not a new version: readers ignore fields they do not
know and give absent ones their default. ``schemas/`` keeps the JSON schema of each
version (``schemas/<kind>/<Type>.json`` the current one, ``schemas/versions/<n>/...`` each
earlier one); a unit test fails when a schema changes without that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from shoal.core.errors import MessageInvalid

FIELD = "schema_version"

# The message types, by the topic they travel on. Every one starts at version 1.
COMMAND_MESSAGES = (
    "StartWorkflow", "PauseWorkflow", "ResumeWorkflow", "StopWorkflow", "RerunWorkflow",
    "RecoverWorkflow", "ForceTaskSuccess", "WakeWorkflow", "FireTimer", "TaskStarted",
    "TaskSucceeded", "TaskFailed", "TaskKilled", "ExpireLease",
)
OTHER_MESSAGES = (
    "DispatchTask",   # <prefix>.tasks.<group>
    "KillTask",       # <prefix>.worker-control
    "StartAnswer",    # <prefix>.worker-control: the answer to a claim
    "Heartbeat",      # <prefix>.worker-heartbeats
    "TaskLogChunk",   # <prefix>.task-logs
    "Event",          # <prefix>.events: the envelope; its data has the event's own version
    "DeadLetter",     # <prefix>.dead-letters
    "Schedule",       # <prefix>.schedules, kind schedule
    "Backfill",       # <prefix>.schedules, kind backfill
)
EVENT_NAMES = (
    "WorkflowSubmitted", "WorkflowStarted", "WorkflowQueued", "WorkflowPausing",
    "WorkflowPaused", "WorkflowResumed", "WorkflowStopping", "WorkflowStopped",
    "WorkflowSucceeded", "WorkflowFailed", "WorkflowRestarted", "WorkflowTimedOut",
    "TimerArmed", "TimerCancelled", "TimerFired", "TaskDelayed", "TaskDispatched",
    "TaskDryRun", "TaskStarted", "TaskSucceeded", "TaskFailed", "TaskKilled", "TaskLost",
    "TaskKillRequested", "TaskRetryScheduled", "TaskTimedOut", "TaskPaused", "TaskSkipped",
    "TaskDecided", "TaskForcedSuccess", "InputRejected",
)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Versions:
    """What one release writes and reads: the current version of each type and the
    upcasters from each earlier one. ``THIS_RELEASE`` is Shoal's; tests build others."""

    def __init__(self, current: Mapping[str, int],
                 upcasters: Mapping[tuple[str, int], Upcaster] | None = None) -> None:
        self.current = MappingProxyType(dict(current))
        self.upcasters = MappingProxyType(dict(upcasters or {}))
        for (name, v), _ in self.upcasters.items():
            if name not in self.current or not 1 <= v < self.current[name]:
                raise ValueError(f"upcaster {name} v{v} is outside 1..{self.current.get(name)}")
        for name, v in self.current.items():
            missing = [k for k in range(1, v) if (name, k) not in self.upcasters]
            if missing:
                raise ValueError(f"{name} is at version {v} without an upcaster from "
                                 f"version(s) {missing}")

    def of(self, name: str) -> int:
        """The version this release writes for ``name``."""
        return self.current[name]


# Events (in the log) and messages (on the wire) have separate tables: an event
# ``TaskStarted`` and a report ``TaskStarted`` are different shapes.
EVENTS = Versions({name: 1 for name in EVENT_NAMES})
MESSAGES = Versions({name: 1 for name in (*COMMAND_MESSAGES, *OTHER_MESSAGES)})


class FutureVersion(MessageInvalid):
    """A shape written by a newer release than this one."""


def version_of(obj: Mapping[str, Any]) -> int:
    """The ``schema_version`` a message states (1 when it states none); a value that is
    not a positive integer is refused."""
    v = obj.get(FIELD, 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise MessageInvalid(f"{FIELD}: {v!r} is not a positive integer")
    return v


def upcast(name: str, version: int, data: Mapping[str, Any], table: Versions) -> dict[str, Any]:
    """``data`` of type ``name`` written at ``version``, in the shape this release reads.

    Raises :class:`FutureVersion` for a version newer than ``table`` knows. An unknown
    ``name`` is returned as it is (the caller refuses unknown types with its own words).
    """
    current = table.current.get(name)
    if current is None:
        return dict(data)
    if version > current:
        raise FutureVersion(
            f"{name} schema_version {version} is newer than this release reads "
            f"(up to {current}); upgrade this service to read it")
    out = dict(data)
    for v in range(version, current):
        out = table.upcasters[(name, v)](out)
    return out


def stamp(name: str, obj: dict[str, Any], table: Versions = MESSAGES) -> dict[str, Any]:
    """``obj`` with the version this release writes for ``name`` (the encoders' step)."""
    obj[FIELD] = table.of(name)
    return obj
