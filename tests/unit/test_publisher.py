"""The publisher's account of Kafka's health must come from Kafka itself."""

from __future__ import annotations

import asyncio

from poller.health import Health
from poller.publisher import KafkaPublisher, publish
from poller.settings import KafkaSettings, RetrySettings


async def test_an_empty_batch_says_nothing_about_the_broker() -> None:
    health = Health()
    health.broker_failed()
    # Nothing listens on port 9: any real contact would fail.
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        RetrySettings(max_attempts=1),
        stopping=asyncio.Event(),
        health=health,
        retry_forever=False,
    )
    assert await publish(publisher, []) == []
    assert "kafka: unreachable" in health.problems()
    await publisher.stop(1.0)
