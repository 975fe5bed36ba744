"""Partition discovery against a broker that answers metadata like Apache Kafka.

Apache Kafka answers a metadata request for no topics (what aiokafka's clients bootstrap
with) with no topics, one for all topics (``None``) with all, and one naming topics with
those. The embedded broker answers every request with every topic, which is how a reader
relying on a client's bootstrap metadata passed every test there and found no partitions
on Apache Kafka. The fake below stands in for the broker connection only (the network
boundary): aiokafka's client, cluster metadata and admin code run as they are.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from aiokafka import client as aiokafka_client
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest, MetadataResponse_v1

from shoal.infra import kafka
from shoal.infra.settings import Settings

TOPICS = {"shoal.worker-control": 3, "shoal.worker-heartbeats": 2}


class ApacheLikeConnection:
    """One broker (node 1) with ``TOPICS``; metadata answered as Apache Kafka does."""

    asked: ClassVar[list[list[str] | None]] = []

    def __init__(self, *_: Any, **__: Any) -> None:
        self.open = True

    def connected(self) -> bool:
        return self.open

    def close(self, reason: object = None) -> asyncio.Future[None]:
        self.open = False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(self, request: Any, expect_response: bool = True) -> Any:
        if not isinstance(request, MetadataRequest):
            raise AssertionError(f"unexpected request {request!r}")
        wanted = request._topics
        ApacheLikeConnection.asked.append(wanted)
        names = list(TOPICS) if wanted is None else [t for t in wanted if t in TOPICS]
        return MetadataResponse_v1(
            [(1, "127.0.0.1", 9092, None)], 1,
            [(0, t, False, [(0, p, 1, [1], [1]) for p in range(TOPICS[t])]) for t in names])


@pytest.fixture
def apache_like(monkeypatch: pytest.MonkeyPatch) -> None:
    async def create_conn(*args: Any, **kwargs: Any) -> ApacheLikeConnection:
        return ApacheLikeConnection()

    monkeypatch.setattr(aiokafka_client, "create_conn", create_conn)
    ApacheLikeConnection.asked = []


async def test_a_clients_bootstrap_metadata_has_no_topics_on_apache_kafka(
        apache_like: None) -> None:
    """The cause of the bug: refreshing "all metadata" fills a throwaway object, and the
    client's own metadata (what ``partitions_for_topic`` reads) stays without topics."""
    c = AIOKafkaClient(bootstrap_servers="127.0.0.1:9092")
    await c.bootstrap()
    try:
        assert ApacheLikeConnection.asked[0] == []  # the bootstrap asks for no topics
        await c.fetch_all_metadata()  # what AIOKafkaConsumer.topics() does
        assert c.cluster.partitions_for_topic("shoal.worker-control") is None
    finally:
        await c.close()


async def test_partitions_of_names_the_topic(apache_like: None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    await admin.start()
    try:
        assert await kafka.partitions_of(admin, "shoal.worker-control") == {0, 1, 2}
        assert await kafka.partitions_of(admin, "shoal.missing") == set()
    finally:
        await admin.close()
    assert ["shoal.worker-control"] in ApacheLikeConnection.asked


async def test_tails_find_their_partitions_on_apache_kafka(apache_like: None) -> None:
    """What ``tail`` (the worker's control topic, the heartbeat readers, the API's event
    hub) assigns: every partition the cluster has, found on the first request."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9092")
    assert await kafka.wait_partitions(settings, "shoal.worker-heartbeats", within=1) == \
        {0, 1}
