"""``glance-poller tail``: print the events of a topic as they arrive."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from poller.publisher import connection_options
from poller.settings import KafkaSettings

# --until-end: how long the consumer may take to be assigned the partitions of existing topics.
ASSIGNMENT_WAIT = 30.0


def _headers(record: Any) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (record.headers or ())}


def format_line(record: Any) -> str:
    """One human line: when, what, which partner and session, the key numbers."""
    headers = _headers(record)
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return f"{record.topic} offset={record.offset} (not JSON: {len(record.value)} bytes)"
    if record.topic.endswith("dlq") or "dlq_reason" in headers:
        return (
            f"DEAD LETTER partner={headers.get('dlq_partner_id')} "
            f"reason={headers.get('dlq_reason')!r}"
        )
    session = value.get("session", {}) if isinstance(value, dict) else {}
    kind = headers.get("ce_type", record.topic).rsplit(".", 1)[-1]
    guests = session.get("guests") or []
    return (
        f"{headers.get('ce_time', '?'):20} {kind:9} partner={value.get('partnerId')} "
        f"session={session.get('id')} type={session.get('type')} "
        f"status={session.get('status')} duration={session.get('duration')}s "
        f"guests={len(guests)} user={value.get('userName')}"
    )


def _partner_of(headers: dict[str, str]) -> str | None:
    return headers.get("ce_source", "").rsplit("/", 1)[-1] or headers.get("dlq_partner_id")


def _render(record: Any, headers: dict[str, str], as_json: bool) -> str:
    if not as_json:
        return format_line(record)
    return orjson.dumps(
        {
            "topic": record.topic,
            "key": record.key.decode() if record.key else None,
            "headers": headers,
            "value": orjson.loads(record.value),
        }
    ).decode()


async def tail(
    kafka: KafkaSettings,
    topics: list[str],
    *,
    from_beginning: bool,
    as_json: bool,
    partner: int | None = None,
    max_events: int | None = None,
    until_end: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print the topics' events; with ``until_end``, only those below the end offsets the
    partitions had when it started (then exit 0, like kcat -e), else forever."""
    # Until the daemon's first event the topic may not exist yet: that is expected here,
    # not an error worth a log line every few hundred milliseconds.
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    consumer = AIOKafkaConsumer(
        *topics,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **connection_options(kafka),
    )
    await consumer.start()
    shown = 0

    def show(record: Any) -> bool:
        """Print it if wanted; True once max_events are shown."""
        nonlocal shown
        headers = _headers(record)
        if partner is not None and _partner_of(headers) != str(partner):
            return False
        print(_render(record, headers, as_json), file=out, flush=True)
        shown += 1
        return max_events is not None and shown >= max_events

    try:
        if until_end:
            await _until_end(consumer, topics, show, err)
        else:
            async for record in consumer:
                if show(record):
                    break
    finally:
        await consumer.stop()
    return 0


async def _until_end(
    consumer: AIOKafkaConsumer,
    topics: list[str],
    show: Callable[[Any], bool],
    err: TextIO,
) -> None:
    """Read the assigned partitions up to the end offsets they had once assigned."""
    existing = set(topics) & set(await consumer.topics())
    for topic in sorted(set(topics) - existing):
        print(f"topic {topic} does not exist: nothing to read", file=err, flush=True)
    deadline = time.monotonic() + ASSIGNMENT_WAIT
    while not existing <= {tp.topic for tp in consumer.assignment()}:
        if time.monotonic() > deadline:
            raise KafkaError(f"no partition of {sorted(existing)} assigned in {ASSIGNMENT_WAIT:g}s")
        await asyncio.sleep(0.05)
    partitions = sorted(consumer.assignment())
    end: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    remaining = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset < end[tp] and show(record):
                    return
        remaining = [tp for tp in remaining if await consumer.position(tp) < end[tp]]
