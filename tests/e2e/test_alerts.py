"""Alerts: a signed webhook exactly once despite an orchestrator SIGKILL; email over SMTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from shoal.infra.processes import free_port
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e
SECRET = "s3cret-for-tests"


class Hook:
    """A webhook receiver recording every request (answers 500 to the first `fail` ones)."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = hook.fail > 0
                hook.fail -= 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 OK"


async def test_a_failure_alert_arrives_once_signed_and_by_email(bare_stack: Stack):
    stack = bare_stack
    hook, mailbox = Hook(fail=1), Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        channels = json.dumps({
            "ops": {"type": "webhook", "url": hook.url, "secret": SECRET},
            "mail": {"type": "email", "host": "127.0.0.1", "port": smtp.port,
                     "from": "shoal@example.test", "to": ["oncall@example.test"]}})
        stack.start("api", SHOAL_ALERT_CHANNELS=channels)
        await eventually(stack._healthy, timeout=60, what="API up")
        orchestrator = stack.start("orchestrator", SHOAL_ALERT_CHANNELS=channels)
        stack.start("projector", SHOAL_ALERT_CHANNELS=channels)
        stack.start("worker")
        r = await stack.request("POST", "/api/v1/workflows", json={
            "name": "nightly", "alerts": {"on": ["failure"], "channels": ["nowhere"]},
            "tasks": [{"name": "a", "command": "exit 3"}]})
        assert r.status_code == 422 and r.json()["problems"][0]["path"] == "alerts.channels[0]"
        await stack.apply({"name": "nightly", "alerts": {"on": ["failure"],
                                                         "channels": ["ops", "mail"]},
                           "tasks": [{"name": "a", "command": "exit 3"}]})
        await stack.apply({"name": "quiet", "alerts": {"on": ["failure"], "channels": ["ops"]},
                           "tasks": [{"name": "a", "command": "true"}]})
        ok = (await stack.request("POST", "/api/v1/workflows/quiet/runs", json={})).json()
        iid = (await stack.request("POST", "/api/v1/workflows/nightly/runs",
                                   json={})).json()["instance_id"]

        async def failed() -> bool:
            r = await stack.request("GET", f"/api/v1/runs/{iid}/events")
            return r.status_code == 200 and any(e["type"] == "WorkflowFailed"
                                                for e in r.json())

        await eventually(failed, interval=0.02, what="WorkflowFailed committed")
        orchestrator.kill9()  # right after the failure event
        stack.start("orchestrator", SHOAL_ALERT_CHANNELS=channels)

        # The first delivery is answered 500; the retry carries the same idempotency key.
        async def retried() -> bool:
            return len(hook.received) >= 2

        async def mailed() -> bool:
            return bool(mailbox.messages)

        await eventually(retried, timeout=30, what="the webhook retried")
        await eventually(mailed, timeout=30, what="the email")
        await stack.wait_run(ok["instance_id"])
        await asyncio.sleep(3)  # anything sent twice would arrive by now
        assert len(hook.received) == 2 and len(mailbox.messages) == 1
        (h1, b1), (h2, b2) = hook.received
        assert h1["idempotency-key"] == h2["idempotency-key"] and b1 == b2
        expected = hmac.new(SECRET.encode(), h2["x-shoal-timestamp"].encode() + b"." + b2,
                            hashlib.sha256).hexdigest()
        assert h2["x-shoal-signature"] == f"sha256={expected}"
        alert = json.loads(b2)
        assert alert["event"] == "failure" and alert["instance_id"] == iid
        assert alert["workflow"] == "nightly" and alert["state"] == "failed"
        mail = mailbox.messages[0].decode()
        assert "Subject: [shoal] nightly: failure" in mail and iid in mail
    finally:
        smtp.stop()
        hook.server.shutdown()
