"""``glance-poller tail``: print the events of a topic as they arrive."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer

from poller.publisher import connection_options
from poller.settings import KafkaSettings


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


async def tail(
    kafka: KafkaSettings,
    topics: list[str],
    *,
    from_beginning: bool,
    as_json: bool,
    partner: int | None = None,
    max_events: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
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
    try:
        async for record in consumer:
            headers = _headers(record)
            source_partner = headers.get("ce_source", "").rsplit("/", 1)[-1] or headers.get(
                "dlq_partner_id"
            )
            if partner is not None and source_partner != str(partner):
                continue
            if as_json:
                line = orjson.dumps(
                    {
                        "topic": record.topic,
                        "key": record.key.decode() if record.key else None,
                        "headers": headers,
                        "value": orjson.loads(record.value),
                    }
                ).decode()
            else:
                line = format_line(record)
            print(line, file=out, flush=True)
            shown += 1
            if max_events is not None and shown >= max_events:
                break
    finally:
        await consumer.stop()
    return 0
