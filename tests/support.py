"""Test helpers: waiting, the service stack as real processes, Postgres resolution."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx

from shoal.infra.processes import OwnedProcess, free_port, service_argv
from tests.releases import Release

T = TypeVar("T")
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0,
                     interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class JsonHandler(BaseHTTPRequestHandler):
    """A local HTTP peer for http tasks: subclasses answer with :meth:`reply`."""

    def reply(self, status: int, body: Any) -> None:
        out = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        return


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a free local port for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class Stack:
    """Shoal services as processes with their own topic prefix and database."""

    def __init__(self, bootstrap: str, database_url: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.prefix = f"t{secrets.token_hex(4)}"
        self.workdir = workdir
        self.api_port = free_port()
        self.processes: list[OwnedProcess] = []
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.metrics_ports: dict[tuple[str, int], int] = {}
        self.datasource_url: str | None = None  # the datasource `default` of sql tasks
        # Every stack runs with auth on; tests speak as admin unless they say otherwise.
        self.tokens = {role: f"{role}-{secrets.token_hex(12)}"
                       for role in ("viewer", "operator", "admin")}
        # Good for /metrics alone; the worker gets it instead of an API token.
        self.metrics_token = f"metrics-{secrets.token_hex(12)}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SHOAL_KAFKA_BOOTSTRAP=self.bootstrap, SHOAL_DATABASE_URL=self.database_url,
                   SHOAL_TOPIC_PREFIX=self.prefix, SHOAL_API_PORT=str(self.api_port),
                   SHOAL_API_HOST="127.0.0.1", SHOAL_DATA_DIR=str(self.workdir / "data"),
                   SHOAL_PARTITIONS="4", SHOAL_OUTBOX_RELAY_INTERVAL="0.2",
                   SHOAL_KAFKA_SESSION_TIMEOUT_MS="6000", SHOAL_LEASE_TIMEOUT="5",
                   SHOAL_WORKER_HEARTBEAT_INTERVAL="1",
                   # Quicker idle fetches (heartbeat and log readers) keep the suite short;
                   # the default (500 ms) is what make dev and make bench run with.
                   SHOAL_KAFKA_FETCH_MAX_WAIT_MS="100",
                   SHOAL_API_TOKENS=",".join(f"{r}:{t}" for r, t in self.tokens.items()),
                   SHOAL_API_TOKEN=self.tokens["admin"], SHOAL_METRICS_TOKEN=self.metrics_token)
        if self.datasource_url:
            env["SHOAL_DATASOURCES"] = json.dumps({"default": self.datasource_url})
        env.update(extra)
        return env

    def start(self, name: str, *, release: Release | None = None, **extra: str) -> OwnedProcess:
        """Start service ``name`` of this tree, or of an earlier ``release``."""
        n = sum(1 for p in self.processes if p.name == name)
        if name == "worker":
            extra.setdefault("SHOAL_WORKER_ID", f"{self.prefix}-worker-{n}")
            # Tasks see none of the worker's SHOAL_* variables; tests that need to know
            # which worker ran a task read this one, passed through the allow-list.
            extra.setdefault("TEST_WORKER_ID", extra["SHOAL_WORKER_ID"])
            extra.setdefault("SHOAL_TASK_ENV_PASS", "TEST_WORKER_ID")
            # As docker-compose.yml: a worker holds no API token, only the metrics one.
            extra.setdefault("SHOAL_API_TOKENS", "")
            extra.setdefault("SHOAL_API_TOKEN", "")
        if name != "api":
            extra.setdefault("SHOAL_METRICS_PORT", str(free_port()))
            self.metrics_ports[(name, n)] = int(extra["SHOAL_METRICS_PORT"])
        env = self.env(**extra)
        log = self.workdir / f"{name}-{n}.log"
        if release is not None:
            env = release.env(env)
            log = self.workdir / f"{name}-{n}-{release.label}.log"
        proc = OwnedProcess(name, service_argv(name), env, log,
                            cwd=release.root if release else None).start()
        self.processes.append(proc)
        return proc

    async def start_all(self, workers: int = 1) -> None:
        self.start("api")
        await eventually(self._healthy, timeout=60, what="API /healthz")
        self.start("orchestrator")
        self.start("projector")
        for _ in range(workers):
            self.start("worker")

    async def _healthy(self) -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(self.api + "/healthz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def terminate(self, procs: list[OwnedProcess], timeout: float = 30.0) -> None:
        """SIGTERM ``procs`` at once (their process groups), then wait for each; one
        still there after ``timeout`` seconds is SIGKILLed."""
        for p in procs:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            assert p.proc is not None
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill9()

    def logs(self) -> str:
        out = []
        for p in self.processes:
            if p.log_path and p.log_path.exists():
                out.append(f"==== {p.name} ({p.log_path.name})\n"
                           + p.log_path.read_text(errors="replace")[-6000:])
        return "\n".join(out)

    # ------------------------------------------------------------------ API helpers
    def auth(self, role: str | None = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    async def request(self, method: str, path: str, *, role: str | None = "admin",
                      **kw: Any) -> httpx.Response:
        """A request to the API with the token of ``role`` (None: no token)."""
        headers = {**self.auth(role), **kw.pop("headers", {})}
        async with httpx.AsyncClient(base_url=self.api, timeout=30) as c:
            return await c.request(method, path, headers=headers, **kw)

    async def apply(self, definition: dict[str, Any]) -> dict[str, Any]:
        r = await self.request("POST", "/api/v1/workflows", json=definition)
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    async def run_state(self, instance_id: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/api/v1/runs/{instance_id}")
        return dict(r.json()) if r.status_code == 200 else None

    async def wait_run(self, instance_id: str, states: tuple[str, ...] = ("succeeded", "failed"),
                       timeout: float = 60.0, attempt: int = 1) -> dict[str, Any]:
        """Wait until the run (at least at ``attempt``) is in one of ``states``."""
        async def probe() -> dict[str, Any] | None:
            run = await self.run_state(instance_id)
            ok = run and run["state"] in states and run["attempt"] >= attempt
            return run if ok else None
        try:
            return await eventually(probe, timeout=timeout, what=f"run {instance_id} in {states}")
        except AssertionError:
            print(self.logs())
            raise

    async def wait_state(self, instance_id: str, state: str, timeout: float = 30.0) -> None:
        """Wait until the run is in ``state`` (e.g. running, serial_wait)."""
        async def probe() -> bool:
            run = await self.run_state(instance_id)
            return bool(run and run["state"] == state)
        await eventually(probe, timeout=timeout, what=f"run {instance_id} {state}")

    async def wait_task_state(self, instance_id: str, state: str,
                              timeout: float = 30.0, task: str | None = None) -> None:
        """Wait until some task of the run (or ``task``) is in ``state`` (e.g. running)."""
        async def probe() -> bool:
            run = await self.run_state(instance_id)
            return bool(run and any(t["state"] == state and task in (None, t["task"])
                                    for t in run["tasks"]))
        await eventually(probe, timeout=timeout, what=f"a task of {instance_id} {state}")

    async def events(self, instance_id: str) -> list[dict[str, Any]]:
        r = await self.request("GET", f"/api/v1/runs/{instance_id}/events")
        assert r.status_code == 200, r.text
        return list(r.json())


def start_command(workflow: str, instance_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": "StartWorkflow", "message_id": str(uuid.uuid4()),
            "instance_id": instance_id or str(uuid.uuid4()),
            "sent_at": "2026-11-22T00:00:00+00:00", "workflow": workflow, "version": None,
            "params": {}, **fields}
