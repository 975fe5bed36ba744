"""The whole stack through a broker that needs TLS (the embedded broker behind a TLS
front, see tests/tls_proxy.py); the SASL mechanisms the embedded broker cannot serve are
named in the README ("Kafka: security, group membership, durability")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from shoal.infra import kafka
from shoal.infra.processes import OwnedProcess, free_port, start_broker, wait_port
from shoal.infra.settings import Settings
from tests.support import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHAIN = {"name": "tls-chain", "tasks": [
    {"name": "a", "command": "echo a"},
    {"name": "b", "command": "echo b", "depends_on": ["a"]}]}


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=shoal test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(bootstrap, CA file) of an embedded broker reachable only through TLS."""
    ca, cert, key = make_certificates(tmp_path)
    front, plain = free_port(), free_port()
    broker = start_broker(plain, tmp_path / "broker.log", advertised=front)
    proxy = OwnedProcess("tls-front", [sys.executable, "-m", "tests.tls_proxy", str(front),
                                       str(plain), str(cert), str(key)],
                         {**os.environ, "PYTHONPATH": str(ROOT)},
                         tmp_path / "tls-front.log").start()
    try:
        wait_port("127.0.0.1", front)
        yield f"127.0.0.1:{front}", ca
    finally:
        proxy.stop()
        broker.stop()


class TlsStack(Stack):
    def __init__(self, bootstrap: str, database_url: str, workdir: Path, ca: Path) -> None:
        super().__init__(bootstrap, database_url, workdir)
        self.ca = ca

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(SHOAL_KAFKA_SECURITY_PROTOCOL="SSL",
                           SHOAL_KAFKA_SSL_CAFILE=str(self.ca), **extra)


async def test_a_plaintext_client_cannot_reach_the_tls_broker(
        tls_broker: tuple[str, Path]) -> None:
    bootstrap, ca = tls_broker
    with pytest.raises(KafkaConnectionError):
        await kafka.cluster_facts(Settings(kafka_bootstrap=bootstrap,
                                           kafka_security_protocol="PLAINTEXT"))
    facts = await kafka.cluster_facts(Settings(kafka_bootstrap=bootstrap,
                                               kafka_security_protocol="SSL",
                                               kafka_ssl_cafile=ca))
    assert facts.brokers == 1


async def test_the_whole_stack_runs_a_workflow_over_tls(
        tls_broker: tuple[str, Path], database: str, tmp_path: Path) -> None:
    bootstrap, ca = tls_broker
    stack = TlsStack(bootstrap, database, tmp_path / "stack", ca)
    (tmp_path / "stack").mkdir()
    try:
        await stack.start_all()
        stack.start("scheduler")
        await stack.apply(CHAIN)
        r = await stack.request("POST", "/api/v1/workflows/tls-chain/runs", json={})
        assert r.status_code == 202, r.text
        run = await stack.wait_run(r.json()["instance_id"], timeout=90)
        assert run["state"] == "succeeded"
        assert all(p.alive() for p in stack.processes), stack.logs()
    finally:
        stack.stop()
