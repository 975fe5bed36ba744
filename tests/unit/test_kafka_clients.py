"""How Shoal's Kafka clients are configured: security, group timing, topics, failures."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import InvalidSessionTimeoutError
from pydantic import ValidationError

from shoal.infra import kafka
from shoal.infra.lifecycle import run_service
from shoal.infra.members import Membership
from shoal.infra.settings import Settings
from shoal_orchestrator.handler import Cache
from shoal_orchestrator.main import Ownership
from shoal_scheduler.main import broker_credentials


def test_plaintext_by_default() -> None:
    kw = kafka.client_kwargs(Settings(kafka_bootstrap="b:9092"))
    assert kw == {"bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT"}
    assert broker_credentials(Settings()) is None


def test_sasl_ssl_carries_credentials_and_a_tls_context() -> None:
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="shoal", kafka_sasl_password="pw")
    kw = kafka.client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "shoal", "pw")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname
    creds = broker_credentials(s)
    assert creds is not None and creds.protocol.value == "SASL_SSL"
    assert "pw" not in repr(s)  # the password never shows in a settings dump


def test_sasl_without_a_user_fails_at_start() -> None:
    with pytest.raises(ValueError, match="SHOAL_KAFKA_SASL_USERNAME"):
        kafka.client_kwargs(Settings(kafka_security_protocol="SASL_PLAINTEXT"))


def test_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError):
        Settings(kafka_sasl_mechanism="GSSAPI")


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SHOAL_KAFKA_SSL_KEYFILE"):
        kafka.client_kwargs(Settings(kafka_security_protocol="SSL",
                                     kafka_ssl_certfile=tmp_path / "c.pem"))


async def test_group_timing_is_set_deliberately() -> None:
    s = Settings()
    assert s.kafka_session_timeout_ms >= 6000  # Apache Kafka's default floor
    c = kafka.consumer(s, group_id="g")
    coordinator_args = (c._session_timeout_ms, c._heartbeat_interval_ms,
                        c._rebalance_timeout_ms, c._max_poll_interval_ms)
    assert coordinator_args == (6000, 1000, 60000, 300000)


async def test_topics_get_replication_insync_and_retention(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    async def three_brokers(settings: Settings) -> kafka.ClusterFacts:
        return kafka.ClusterFacts(brokers=5, idempotence=True)

    monkeypatch.setattr(kafka, "cluster_facts", three_brokers)
    s = Settings()
    spec = await kafka.topic_spec(s, s.commands_topic)
    assert spec.replication_factor == 3
    assert spec.topic_configs == {"min.insync.replicas": "2", "cleanup.policy": "delete",
                                  "retention.ms": str(7 * kafka.DAY_MS)}
    assert (await kafka.topic_spec(s, s.topic("worker-heartbeats"))).topic_configs[
        "retention.ms"] == str(kafka.HOUR_MS)
    assert (await kafka.topic_spec(s, s.tasks_topic("gpu"))).topic_configs[
        "retention.ms"] == str(7 * kafka.DAY_MS)
    assert (await kafka.topic_spec(s, s.schedules_topic)).topic_configs == {
        "min.insync.replicas": "2", "cleanup.policy": "compact"}
    one = Settings(kafka_replication_factor=1)
    spec = await kafka.topic_spec(one, one.events_topic)
    assert (spec.replication_factor, spec.topic_configs["min.insync.replicas"]) == (1, "1")


async def test_a_refused_session_timeout_names_the_setting(
        caplog: pytest.LogCaptureFixture) -> None:
    async def joins(stop: asyncio.Event) -> None:
        raise InvalidSessionTimeoutError()

    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit):
        await run_service("worker", [joins])
    assert "SHOAL_KAFKA_SESSION_TIMEOUT_MS" in caplog.text
    assert "group.min.session.timeout.ms" in caplog.text


async def test_revoke_does_not_wait_for_a_long_batch() -> None:
    """N4: the revoke callback flags the partitions and waits for the batch in hand at most
    ``drain_s``; the runs are dropped by the loop between batches."""
    cache, lock = Cache(), asyncio.Lock()
    me = Membership("m", "orchestrator", "g")
    me.partitions = {1, 2}
    own = Ownership(cache, lock, me, drain_s=0.2)
    own.to_load = {2}
    await lock.acquire()  # a batch retrying through a database outage
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(own.on_partitions_revoked([TopicPartition("c", 2)]), 2)
    assert loop.time() - t0 < 1.0
    assert me.partitions == {1} and own.to_load == set() and own.stale == {2}
    lock.release()


async def test_revoke_lets_a_short_batch_finish_first() -> None:
    cache, lock = Cache(), asyncio.Lock()
    own = Ownership(cache, lock, Membership("m", "orchestrator", "g"), drain_s=5)
    await lock.acquire()
    order: list[str] = []

    async def batch() -> None:
        await asyncio.sleep(0.05)
        order.append("batch committed")
        lock.release()

    task = asyncio.create_task(batch())
    await own.on_partitions_revoked([TopicPartition("c", 3)])
    order.append("revoked")
    await task
    assert order == ["batch committed", "revoked"]
