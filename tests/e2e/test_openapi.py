"""The OpenAPI document is complete and true: schemathesis against the running API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator")
    stack.start("projector")  # no worker: generated definitions are never executed
    await stack.apply({"name": "seed", "tasks": [{"name": "a", "command": "true"}]})
    r = await stack.request("POST", "/api/v1/workflows/seed/runs", json={})
    await stack.wait_run(r.json()["instance_id"], states=("running", "submitted"))
    exe = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.to_thread(subprocess.run, [
        str(exe), "run", f"{stack.api}/openapi.json",
        "-H", f"Authorization: Bearer {stack.tokens['admin']}",
        "--checks", "not_a_server_error,response_schema_conformance,"
                    "content_type_conformance,status_code_conformance",
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25",
        # The live event streams never end while their runs do not (no worker here), so
        # each generated request would wait out the client's timeout; test_event_log.py
        # checks them, their content type and their events.
        "--exclude-path-regex", "/stream$",
        # A generated backfill range that turns out too long is refused (422) after the
        # planner walked 100,001 cron fires: seconds, more than the default 10 s read
        # timeout on a loaded CI machine (other requests are served meanwhile:
        # test_backfill.py); a timeout here would be a network error, not a finding.
        "--request-timeout", "60",
        "--workers", "2", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=540, cwd=stack.workdir)
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    assert "Server error" not in proc.stdout
