"""The publisher sends record batches: every event arrives once with its headers, keys land on
the partition a plain ``send()`` would choose, and each key's events keep their order, across
pages too; with batches written natively (uncompressed) and by aiokafka (compressed)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Literal

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from poller.events import Event
from poller.health import Health
from poller.publisher import KafkaPublisher, publish
from poller.settings import KafkaSettings, RetrySettings

PARTITIONS = 4


async def _create(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    finally:
        await admin.close()


async def _partitions_by_send(bootstrap: str, topic: str, keys: list[bytes]) -> dict[bytes, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"{}", key=key) for key in keys]
        return {key: (await f).partition for key, f in zip(keys, futures, strict=True)}
    finally:
        await producer.stop()


Arrived = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]


async def _read(bootstrap: str, topic: str, expect: int) -> list[Arrived]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Arrived] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        async with asyncio.timeout(60):
            while len(out) < expect:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    out.extend((tp.partition, m.key, m.value, list(m.headers)) for m in messages)
        await asyncio.sleep(1)  # anything extra would be a duplicate
        for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
            out.extend((tp.partition, m.key, m.value, list(m.headers)) for m in messages)
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_batches_keep_keys_partitions_and_order(
    kafka_bootstrap: str, compression: Literal["none", "gzip"]
) -> None:
    topic, reference = f"batches-{uuid.uuid4().hex[:8]}", f"reference-{uuid.uuid4().hex[:8]}"
    await _create(kafka_bootstrap, topic, reference)
    keys = [str(100_000 + k).encode() for k in range(40)]
    padding = "x" * 600
    events = [
        Event(
            topic,
            keys[i % len(keys)],
            orjson.dumps({"seq": i, "pad": padding}),
            [("n", str(i).encode()), ("é", b"")],
        )
        for i in range(3000)
    ]
    # Larger than a whole batch, and events without a key (as dead letters may be).
    events.insert(1500, Event(topic, keys[0], orjson.dumps({"seq": -1, "pad": "y" * 40_000}), []))
    events += [Event(topic, None, orjson.dumps({"seq": 5000 + i}), []) for i in range(3)]
    publisher = KafkaPublisher(
        KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            max_batch_size=16_384,
            compression_type=compression,
        ),
        RetrySettings(max_attempts=1),
        stopping=asyncio.Event(),
        health=Health(),
        retry_forever=False,
    )
    try:
        # Three pages handed over back to back, as the backfill does, before any is awaited:
        # each is queued in the background, and they must still reach Kafka in order.
        pages = [events[:1000], events[1000:2000], events[2000:]]
        publications = [await publisher.send(page) for page in pages]
        for publication in publications:
            await publication.acknowledged()
    finally:
        await publisher.stop(5)

    got = await _read(kafka_bootstrap, topic, len(events))
    assert sorted((v, h) for _, _, v, h in got) == sorted((e.value, e.headers) for e in events), (
        "every event exactly once, with its headers"
    )
    expected_partition = await _partitions_by_send(kafka_bootstrap, reference, keys)
    order: dict[bytes, list[int]] = defaultdict(list)
    for partition, key, value, _ in got:
        if key is None:
            continue
        assert partition == expected_partition[key]
        order[key].append(orjson.loads(value)["seq"])
    sent_order: dict[bytes, list[int]] = defaultdict(list)
    for event in events:
        if event.key is not None:
            sent_order[event.key].append(orjson.loads(event.value)["seq"])
    assert order == sent_order, "each key's events in the order they were published"
    assert len({p for p, _, _, _ in got}) == PARTITIONS


async def test_a_producer_replaced_after_a_refusal_stalls_no_page_waiting_for_metadata(
    kafka_bootstrap: str,
) -> None:
    """One page's refusal replaces the producer while another page is being queued (waiting for
    the metadata of a topic the broker is still creating): that page must not be left with the
    stopped producer, whose metadata never comes, holding the queue for every partner."""
    small, fresh = (f"it.{name}.{uuid.uuid4().hex[:8]}" for name in ("small", "fresh"))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "20000"})]
        )
    finally:
        await admin.close()
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        RetrySettings(max_attempts=5, initial_delay=0.01, max_delay=0.05),
        stopping=asyncio.Event(),
        health=Health(),
        retry_forever=False,
    )
    try:
        assert await publish(publisher, [Event(small, b"0", b"{}", [])]) == []
        refused_page = [
            Event(small, b"1", b"{}", []),
            Event(small, b"2", b"x" * 60_000, []),
            Event(small, b"3", b"{}", []),
        ]
        async with asyncio.timeout(60):
            refused, none = await asyncio.gather(
                publish(publisher, refused_page),
                publish(publisher, [Event(fresh, b"a", b"{}", [])]),
            )
        assert [r.event.key for r in refused] == [b"2"] and none == []
    finally:
        await publisher.stop(5)
