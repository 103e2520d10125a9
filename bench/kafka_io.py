"""The Kafka side of the benchmark: counting, reading back, the bare-producer ceiling, and a
consumer that timestamps arrivals."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from poller.publisher import producer_options
from poller.settings import KafkaSettings

# aiokafka logs "topic not found" at ERROR while a new topic is auto-created: expected here.
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

# (key, value, headers) exactly as they were on the topic.
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


async def _partitions(bootstrap: str, topic: str, wait: float) -> list[TopicPartition]:
    """The topic's partitions, waiting ``wait`` seconds at most for it to appear; every topic
    is asked for, so that asking creates none."""
    deadline = time.monotonic() + wait
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            found = [
                p["partition"]
                for described in await admin.describe_topics()
                if described["topic"] == topic and not described["error_code"]
                for p in described["partitions"]
            ]
            if found or time.monotonic() > deadline:
                return [TopicPartition(topic, p) for p in sorted(found)]
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _consumer(bootstrap: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **extra,
    )


async def count(bootstrap: str, topic: str) -> int:
    """Records on ``topic``: the sum of its partitions' end offsets (0 if it does not exist)."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic, 0)
        if not partitions:
            return 0
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its end offsets now: key, value and headers."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    records: list[Record] = []
    try:
        partitions = await _partitions(bootstrap, topic, 10)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while True:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            for messages in batch.values():
                records.extend((m.key, m.value, list(m.headers)) for m in messages)
    finally:
        await consumer.stop()
    return records


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()


async def produce_all(
    settings: KafkaSettings, topic: str, records: list[Record]
) -> tuple[float, float]:
    """The ceiling: a bare producer with the daemon's own options sends ``records`` as fast as
    it can and every future is awaited; (seconds, CPU seconds of this process) from the first
    send to the last ack."""
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    try:
        # The topic is created before the clock starts, as the backfill's topics are.
        await producer.partitions_for(topic)
        started = time.perf_counter()
        cpu_started = time.process_time()
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await producer.stop()


async def warm_up(settings: KafkaSettings, topic: str, count: int = 20_000) -> None:
    """A few seconds of produce traffic so that the first measured run does not also pay for
    the broker's JIT warm-up."""
    value = b"x" * 1000
    await produce_all(settings, topic, [(str(i).encode(), value, []) for i in range(count)])


@dataclass
class Arrivals:
    """Records of a topic with the wall-clock time (time.time()) each one reached us."""

    received: list[tuple[float, bytes]] = field(default_factory=list)


async def record_arrivals(
    bootstrap: str, topic: str, arrivals: Arrivals, stop: asyncio.Event
) -> None:
    """Consume ``topic`` from its beginning until ``stop``; stamp each batch on receipt."""
    consumer = _consumer(bootstrap, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic, 30)
        if not partitions:
            raise RuntimeError(f"topic {topic} does not exist")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                arrivals.received.extend((now, m.value) for m in messages)
    finally:
        await consumer.stop()
