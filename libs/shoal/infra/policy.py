"""The one error policy: what a failure while handling an input means, and what to do.

Every consumer in Shoal (orchestrator, projector, scheduler, worker) handles each input
under this policy:

- ``POISON``: the input itself is wrong (not JSON, not UTF-8, fails its schema, an id
  that is not a UUID, a value the database refuses as data). Retrying cannot help: it
  goes to the dead letters with the reason and its original bytes, and the offset moves
  on.
- ``TRANSIENT``: the environment failed (connection lost, timeout, serialization
  failure, deadlock, lock or statement timeout, a retriable broker error, a fenced
  stream). The same input is retried with backoff and never dead-lettered.
- ``BUG``: anything else. Logged with the input, dead-lettered with the reason, and the
  service keeps serving the other inputs.

A batch that fails for a non-transient reason is split and retried input by input, so
one bad input never holds back the others (see ``per_input``).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.core import versions
from shoal.core.errors import ShoalError
from shoal.infra import codec, kafka, metrics
from shoal.infra.lifecycle import utcnow_iso

log = logging.getLogger(__name__)
T = TypeVar("T")


class Verdict(enum.StrEnum):
    POISON = "poison"
    TRANSIENT = "transient"
    BUG = "bug"


# SQLSTATE classes and errors that say "try again later", whatever the input.
_TRANSIENT_PG: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,            # class 08
    asyncpg.exceptions.TransactionRollbackError,           # 40: serialization, deadlock
    asyncpg.exceptions.LockNotAvailableError,              # 55P03: lock_timeout
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,  # 55000: e.g. recovery
    asyncpg.exceptions.OperatorInterventionError,          # 57: canceled, shutdown
    asyncpg.exceptions.InsufficientResourcesError,         # 53: too many connections
    asyncpg.exceptions.PostgresSystemError,                # 58: I/O error on the server
)
# Errors of the client's connection itself (closed, broken by a terminated backend).
_TRANSIENT_CLIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncio.TimeoutError, ConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError)
# The input carries a value the database refuses as data.
_POISON_PG: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,                          # 22: invalid text, out of range
    asyncpg.exceptions.IntegrityConstraintViolationError,  # 23: not null, check, fk
)


def classify(exc: BaseException) -> Verdict:
    """The policy's verdict on ``exc``, raised while handling one input."""
    if isinstance(exc, ShoalError):
        return Verdict.TRANSIENT if exc.retriable else Verdict.POISON
    if isinstance(exc, KafkaError):
        return Verdict.TRANSIENT if getattr(exc, "retriable", False) or \
            type(exc).__name__ in ("KafkaConnectionError", "KafkaTimeoutError",
                                   "RequestTimedOutError", "NodeNotReadyError") \
            else Verdict.BUG
    if isinstance(exc, _TRANSIENT_PG):
        return Verdict.TRANSIENT
    if isinstance(exc, _POISON_PG):
        return Verdict.POISON
    # Decoding the input: not UTF-8, not JSON (orjson's error is a ValueError).
    if isinstance(exc, UnicodeError | json.JSONDecodeError) or \
            type(exc).__name__ == "JSONDecodeError":
        return Verdict.POISON
    if isinstance(exc, _TRANSIENT_CLIENT):
        return Verdict.TRANSIENT
    return Verdict.BUG


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Verdict.TRANSIENT


def reason_of(exc: BaseException) -> str:
    """A dead letter's reason: the verdict and what went wrong."""
    verdict = classify(exc)
    if isinstance(exc, ShoalError):
        return f"{verdict}: {exc}"
    return f"{verdict}: {type(exc).__name__}: {exc}"


def dead_letter(*, reason: str, service: str, topic: str, partition: int, offset: int,
                key: bytes | None, value: bytes | None, dead_at: str,
                limit: int = 65536) -> dict[str, Any]:
    """The dead-letter record of one input (``schemas/topics/DeadLetter.json``): the
    reason, where it came from and its original bytes (``value`` as UTF-8 with invalid
    bytes replaced, and exactly in ``value_b64``; the first ``limit`` bytes)."""
    raw = value or b""
    return {versions.FIELD: versions.MESSAGES.of("DeadLetter"),
            "reason": reason, "service": service, "topic": topic, "partition": partition,
            "offset": offset, "key": key.decode("utf-8", "replace") if key else None,
            "value": raw[:limit].decode("utf-8", "replace"),
            "value_b64": base64.b64encode(raw[:limit]).decode(),
            "size": len(raw), "dead_at": dead_at}


async def retry_transient(what: str, attempt: Callable[[], Awaitable[T]],
                          stop: asyncio.Event | None = None, *, first: float = 0.5,
                          most: float = 10.0) -> T:
    """Run ``attempt`` until it succeeds or fails for a non-transient reason (raised);
    transient failures are retried with backoff (``first`` doubling to ``most``). When
    ``stop`` is set meanwhile the last transient error is raised."""
    delay = first
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc) or (stop is not None and stop.is_set()):
                raise
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, most)


class DeadLetters:
    """Publishes dead letters of one service to ``<prefix>.dead-letters`` (logged and
    counted in ``shoal_dead_letters_total{service}``)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, service: str) -> None:
        self.producer = producer
        self.topic = topic
        self.service = service
        self._counter = metrics.DEAD_LETTERS.labels(service)

    async def send(self, reason: str, *, topic: str, partition: int, offset: int,
                   key: bytes | None, value: bytes | None) -> None:
        log.warning("dead letter %s[%d]@%d: %s", topic, partition, offset, reason)
        self._counter.inc()
        await kafka.send_reliably(self.producer, self.topic, codec.dumps(dead_letter(
            reason=reason, service=self.service, topic=topic, partition=partition,
            offset=offset, key=key, value=value, dead_at=utcnow_iso())), key)
