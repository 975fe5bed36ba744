"""docker-compose.yml hands each service only the credentials it needs."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_gets_no_api_token_database_url_or_alert_channel():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]["environment"]
    for secret in ("SHOAL_API_TOKENS", "SHOAL_API_TOKEN", "SHOAL_DATABASE_URL",
                   "SHOAL_ALERT_CHANNELS"):
        assert secret not in worker, secret
    assert "SHOAL_METRICS_TOKEN" in worker  # its /metrics stay protected
    api = services["api"]["environment"]
    assert {"SHOAL_API_TOKENS", "SHOAL_DATABASE_URL", "SHOAL_API_STREAMS_PER_TOKEN"} <= set(api)
    for name in ("orchestrator", "projector", "scheduler"):
        assert "SHOAL_DATABASE_URL" in services[name]["environment"], name
