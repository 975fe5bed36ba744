"""Publishing with librdkafka (a non-aiokafka client) and reading topics by assignment."""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import Producer

from shoal.infra.kafka import partitions_of


def publish_with_librdkafka(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    """murmur2_random is the Java client's partitioner: the same key lands on the same
    partition as from aiokafka, so an instance's commands stay in one ordered partition."""
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                  "enable.idempotence": False, "acks": "all"})
    errors: list[Any] = []
    for key, value in messages:
        p.produce(topic, value=value, key=key.encode(),
                  on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert p.flush(30) == 0
    assert errors == []


def start_json(cmd: dict[str, Any]) -> tuple[str, bytes]:
    return cmd["instance_id"], json.dumps(cmd).encode()


async def read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message currently on ``topic`` (assign, no consumer group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        parts = await partitions_of(admin, topic)
    finally:
        await admin.close()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[dict[str, Any]] = []
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            batch = await c.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(json.loads(m.value) for m in msgs)
        return out
    finally:
        await c.stop()
