"""/metrics of every service and the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

# What the issue asks every deployment to expose, and where it comes from.
REQUIRED = {
    "orchestrator": ["shoal_consumer_lag", "shoal_events_appended_total",
                     "shoal_outbox_backlog"],
    "worker": ["shoal_consumer_lag", "shoal_worker_slots", "shoal_worker_attempts_total"],
    "projector": ["shoal_dispatch_to_start_seconds_bucket", "shoal_task_duration_seconds_bucket",
                  "shoal_runs", "shoal_projector_lag_events", "shoal_alerts_total"],
    "scheduler": ["shoal_scheduler_fires_total"],
    "api": ["shoal_http_requests_total", "shoal_http_request_seconds_bucket"],
}


def names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M)}


async def scrape(url: str, token: str | None) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None


async def test_every_service_exposes_its_series_and_the_dashboard_reads_only_those(
        bare_stack: Stack):
    stack = bare_stack
    channels = json.dumps({"ops": {"type": "webhook", "url": "http://127.0.0.1:9/none"}})
    stack.start("api", SHOAL_ALERT_CHANNELS=channels)
    await eventually(stack._healthy, timeout=60, what="API up")
    for name in ("orchestrator", "projector", "worker", "scheduler"):
        stack.start(name, SHOAL_ALERT_CHANNELS=channels)
    await stack.apply({"name": "m", "tasks": [{"name": "a", "command": "sleep 0.2"},
                                              {"name": "b", "command": "true",
                                               "depends_on": ["a"]}]})
    r = await stack.request("POST", "/api/v1/workflows/m/runs", json={})
    await stack.wait_run(r.json()["instance_id"])
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "m", "cron": "* * * * * ?", "catchup": "none"})
    assert r.status_code == 201, r.text

    urls = {name: f"http://127.0.0.1:{port}/metrics"
            for (name, _), port in stack.metrics_ports.items()}
    urls["api"] = f"{stack.api}/metrics"
    exposed: set[str] = set()
    for service, wanted in REQUIRED.items():
        async def complete(service=service, wanted=wanted) -> set[str] | None:
            # The worker holds no API token: its /metrics take the metrics-only one.
            token = stack.metrics_token if service == "worker" else stack.tokens["viewer"]
            text = await scrape(urls[service], token)
            found = names(text or "")
            return found if set(wanted) <= found else None
        exposed |= await eventually(complete, timeout=45, what=f"{service} metrics")
    # Without a token the metrics are refused like every other endpoint.
    assert await scrape(urls["orchestrator"], None) is None
    assert (await stack.request("GET", "/metrics", role=None)).status_code == 401
    assert await scrape(urls["worker"], None) is None
    assert await scrape(urls["worker"], stack.tokens["admin"]) is None  # it has none
    # The metrics token reads every service's /metrics, the API's too, and nothing else.
    assert await scrape(urls["orchestrator"], stack.metrics_token)
    assert await scrape(urls["api"], stack.metrics_token)
    headers = {"Authorization": f"Bearer {stack.metrics_token}"}
    assert (await stack.request("GET", "/api/v1/runs", role=None,
                                headers=headers)).status_code == 401
    async with httpx.AsyncClient() as c:
        health = await c.get(urls["worker"].replace("/metrics", "/healthz"))
    assert health.status_code == 200

    dashboard = json.loads((ROOT / "deploy/grafana/shoal-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"\bshoal_[a-z_]+", t["expr"])}
    assert used and used <= exposed, used - exposed
