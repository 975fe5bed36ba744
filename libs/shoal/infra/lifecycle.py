"""One lifecycle for every service: start components, stop on SIGTERM or first failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from shoal.infra.kafka import explain

log = logging.getLogger(__name__)


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat()


# Context a log call may pass with ``extra={...}``; JSON lines carry them as fields.
LOG_CONTEXT = ("instance_id", "task", "attempt", "causation_id", "dispatch_id", "worker_id")


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message and context."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "service": self.service,
            "logger": record.name, "message": record.getMessage()}
        for key in LOG_CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, service: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines(service) if fmt == "json" else logging.Formatter(
        f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


async def run_service(
    name: str,
    components: Sequence[Callable[[asyncio.Event], Awaitable[None]]],
    *,
    grace: float = 30.0,
) -> None:
    """Run each component as a task until SIGTERM/SIGINT or the first one fails.

    Each component receives the shared ``stop`` event and must return promptly once it is
    set (draining what it holds). Components still running after ``grace`` seconds are
    cancelled. A component failing stops the others: a half-running service is worse
    than a restarted one.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(_as_coroutine(c(stop)), name=f"{name}:{i}")
        for i, c in enumerate(components)
    ]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    for t in done:
        if t is not stopper and not t.cancelled() and t.exception() is not None:
            failure = t.exception()
            log.error("%s component failed: %r", name, failure, exc_info=failure)
            hint = explain(failure) if failure is not None else None
            if hint:
                log.error("%s: %s", name, hint)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    for t in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    stopper.cancel()
    if failure is not None:
        raise SystemExit(1)


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable
