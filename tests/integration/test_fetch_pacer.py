"""The fetch wait follows traffic, on a real consumer of the real broker (the pacer sets
an attribute aiokafka does not document: this fails when an upgrade removes it)."""

from __future__ import annotations

import secrets

from shoal.infra import kafka
from shoal.infra.kafka import paced_wait
from shoal.infra.settings import Settings


def test_the_wait_is_short_while_busy_and_a_twentieth_of_the_quiet_time_up_to_the_max():
    assert paced_wait(0.0, 10, 500) == 10
    assert paced_wait(0.1, 10, 500) == 10       # 5 ms would be below the hot wait
    assert paced_wait(1.0, 10, 500) == 50
    assert paced_wait(5.0, 10, 500) == 250
    assert paced_wait(60.0, 10, 500) == 500


async def test_the_pacer_changes_the_wait_of_a_real_consumers_fetches(broker):
    settings = Settings(kafka_bootstrap=broker, kafka_fetch_max_wait_ms=500,
                        kafka_fetch_hot_wait_ms=10, topic_prefix=f"p{secrets.token_hex(4)}",
                        partitions=2)
    consumer = await kafka.tail(settings, settings.topic("paced"))
    try:
        pacer = kafka.FetchPacer(consumer, settings)
        fetcher = consumer._fetcher
        pacer.saw(3)
        assert fetcher._fetch_max_wait_ms == pacer.wait_ms == 10
        pacer._last -= 5.0
        pacer.saw(0)
        assert fetcher._fetch_max_wait_ms == pacer.wait_ms == 250
    finally:
        await consumer.stop()
