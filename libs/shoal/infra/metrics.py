"""Prometheus metrics of every service, and the small HTTP server that exposes them.

The api serves ``/metrics`` on its own port. The other services serve ``/metrics`` and
``/healthz`` on ``SHOAL_METRICS_PORT`` (default: a fixed port per service, see
``DEFAULT_PORTS``; a second instance on the same host falls back to a free port and logs
it). With ``SHOAL_API_TOKENS`` set, ``/metrics`` needs a bearer token (any role), as on
the api.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from shoal.infra.auth import bearer, parse_tokens
from shoal.infra.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"orchestrator": 9461, "worker": 9462, "projector": 9463, "scheduler": 9464}

# --------------------------------------------------------------------------- series
CONSUMER_LAG = Gauge("shoal_consumer_lag", "Messages on a partition not yet consumed by the "
                     "group", ["group", "topic", "partition"])
EVENTS_APPENDED = Counter("shoal_events_appended_total", "Events appended to the event log")
BATCHES = Counter("shoal_orchestrator_batches_total", "Command batches committed")
DEAD_LETTERS = Counter("shoal_dead_letters_total", "Inputs sent to dead letters", ["service"])
OUTBOX_BACKLOG = Gauge("shoal_outbox_backlog", "Outbox rows committed but not yet published")
DISPATCH_TO_START = Histogram(
    "shoal_dispatch_to_start_seconds", "From a task's dispatch to its start on a worker",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TASK_DURATION = Histogram(
    "shoal_task_duration_seconds", "Task attempts from start to end, by workflow and outcome",
    ["workflow", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400))
RUNS = Gauge("shoal_runs", "Runs in the read model by workflow and state",
             ["workflow", "state"])
PROJECTOR_LAG = Gauge("shoal_projector_lag_events", "Events in the log not yet projected")
CONSISTENCY_VIOLATIONS = Counter(
    "shoal_consistency_violations_total",
    "Violations found by the consistency checker (read model vs log, stuck runs, ...)", ["kind"])
CONSISTENCY_CHECKED = Counter("shoal_consistency_checked_instances_total",
                              "Instances the consistency checker examined")
PROJECTED = Counter("shoal_projected_events_total", "Events applied to the read models")
HTTP_REQUESTS = Counter("shoal_http_requests_total", "API requests",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("shoal_http_request_seconds", "API request latency", ["route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
PYTHON_START = Histogram(
    "shoal_worker_python_start_seconds",
    "From a Python dispatch taken by the worker to its user code running",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
ZYGOTE_STARTS = Counter("shoal_worker_zygote_starts_total",
                        "Warm Python runners started (the first, then restarts)")
WORKER_SLOTS = Gauge("shoal_worker_slots", "Slots of this worker", ["group"])
WORKER_BUSY = Gauge("shoal_worker_slots_busy", "Attempts running on this worker", ["group"])
ATTEMPTS = Counter("shoal_worker_attempts_total", "Attempts finished on this worker",
                   ["group", "outcome"])
FIRES = Counter("shoal_scheduler_fires_total", "Runs started by schedules and backfills",
                ["kind"])
ALERTS = Counter("shoal_alerts_total", "Alert deliveries by channel and outcome",
                 ["channel", "outcome"])
ALERT_BACKLOG = Gauge("shoal_alerts_pending", "Alerts waiting for delivery")


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- lag
async def sample_lag(consumer: AIOKafkaConsumer, group: str, stop: asyncio.Event,
                     every: float = 5.0, into: dict[int, int] | None = None) -> None:
    """Keep ``shoal_consumer_lag`` current for the partitions this member owns (and, with
    ``into``, the latest lag per partition there, for membership reports)."""
    seen: set[tuple[str, int]] = set()
    while not stop.is_set():
        with contextlib.suppress(Exception):  # a rebalance in progress: next round
            owned = set()
            tps = list(consumer.assignment())
            ends = await asyncio.wait_for(consumer.end_offsets(tps), 10) if tps else {}
            for tp in tps:
                position = await asyncio.wait_for(consumer.position(tp), 5)
                lag = max(ends.get(tp, position) - position, 0)
                CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag)
                owned.add((tp.topic, tp.partition))
                if into is not None:
                    into[tp.partition] = lag
            for topic, partition in seen - owned:
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(group, topic, str(partition))
                if into is not None:
                    into.pop(partition, None)
            seen = owned
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


# --------------------------------------------------------------------------- server
async def serve(settings: Settings, service: str, stop: asyncio.Event,
                healthy: Callable[[], bool] = lambda: True) -> None:
    """``GET /metrics`` and ``GET /healthz`` until ``stop`` is set."""
    allowed = metrics_access(settings)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, *_ = lines[0].split(" ")
            headers = dict(_header(line) for line in lines[1:] if ":" in line)
            path = path.split("?", 1)[0]
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/healthz":
                ok = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                body = b'{"status":"ok"}' if ok else b'{"status":"unhealthy"}'
                ctype = "application/json"
            elif path == "/metrics":
                if not allowed(bearer(headers.get("authorization"))):
                    status, body, ctype = "401 Unauthorized", b"bearer token required\n", \
                        "text/plain"
                else:
                    body, ctype = exposition()
                    status = "200 OK"
            else:
                status, body, ctype = "404 Not Found", b"/metrics or /healthz\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: "
                         f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    port = settings.metrics_port if settings.metrics_port is not None \
        else DEFAULT_PORTS.get(service, 0)
    try:
        server = await asyncio.start_server(handle, settings.metrics_host, port)
    except OSError as exc:
        server = await asyncio.start_server(handle, settings.metrics_host, 0)
        log.warning("metrics port %d is taken (%s); serving on a free port instead "
                    "(set SHOAL_METRICS_PORT)", port, exc.strerror)
    bound = server.sockets[0].getsockname()[1]
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, bound)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def metrics_access(settings: Settings) -> Callable[[str | None], bool]:
    """Who may read a service's /metrics: anyone when neither SHOAL_METRICS_TOKEN nor
    SHOAL_API_TOKENS is set; else the metrics token (good for /metrics alone: what the
    worker and a scraper get) or any API token the service was given."""
    tokens = parse_tokens(settings.api_tokens)
    scrape = (settings.metrics_token or "").encode()

    def allowed(token: str | None) -> bool:
        if not scrape and not tokens.enabled:
            return True
        if token is None:
            return False
        given = token.encode("utf-8", "surrogateescape")
        return (bool(scrape) and hmac.compare_digest(given, scrape)) or \
            tokens.principal_of(token) is not None

    return allowed


def _header(line: str) -> tuple[str, str]:
    k, _, v = line.partition(":")
    return k.strip().lower(), v.strip()


def observe_http(method: str, route: str, status: int, started: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


def clear_missing(gauge: Gauge, present: Iterable[tuple[str, ...]],
                  previous: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Drop label sets that are no longer present (e.g. a state with no runs left)."""
    now = set(present)
    for labels in previous - now:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    return now
