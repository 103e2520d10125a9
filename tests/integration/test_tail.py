"""`glance-poller tail --until-end` as a real process against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def _env(bootstrap: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    return env | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}


def _event(partner: int, session: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = {
        "partnerId": partner,
        "userName": f"user-{session}",
        "partnerUserId": "u",
        "session": {"id": session, "type": "C", "status": "C", "duration": 60, "guests": []},
    }
    headers = [
        ("ce_type", b"net.glance.session.completed"),
        ("ce_source", f"/glance/partners/{partner}".encode()),
        ("ce_time", b"2026-03-10T12:00:00Z"),
    ]
    return orjson.dumps(value), headers


def _fill(bootstrap: str, topic: str, events: list[tuple[int, int]], partitions: int) -> None:
    async def fill() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for partner, session in events:
                value, headers = _event(partner, session)
                await producer.send_and_wait(
                    topic, value, key=str(session).encode(), headers=headers
                )
        finally:
            await producer.stop()

    asyncio.run(fill())


def _tail(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poller", "tail", *args],
        capture_output=True,
        text=True,
        env=_env(bootstrap),
        timeout=90,
        check=False,
    )


def _sessions(stdout: str) -> list[int]:
    found = []
    for line in stdout.splitlines():
        for word in line.split():
            if word.startswith("session="):
                found.append(int(word.removeprefix("session=")))
    return found


def test_until_end_prints_what_was_there_and_exits(kafka_bootstrap: str) -> None:
    topic = f"it.tail.{uuid.uuid4().hex[:10]}"
    # Three partitions, five events: some partitions hold several, perhaps one holds none.
    events = [(12345, 100 + n) for n in range(4)] + [(999, 200)]
    _fill(kafka_bootstrap, topic, events, partitions=3)
    started = time.monotonic()

    result = _tail(kafka_bootstrap, "--topic", topic, "--from-beginning", "--until-end")

    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert sorted(_sessions(result.stdout)) == [100, 101, 102, 103, 200]
    assert "Traceback" not in result.stderr

    only = _tail(
        kafka_bootstrap, "--topic", topic, "--from-beginning", "--until-end", "--partner", "999"
    )
    assert only.returncode == 0, only.stderr
    assert _sessions(only.stdout) == [200]

    as_json = _tail(kafka_bootstrap, "--topic", topic, "--from-beginning", "--until-end", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert len(as_json.stdout.splitlines()) == 5
    assert {orjson.loads(line)["topic"] for line in as_json.stdout.splitlines()} == {topic}


def test_until_end_without_from_beginning_has_nothing_to_wait_for(kafka_bootstrap: str) -> None:
    topic = f"it.tail.{uuid.uuid4().hex[:10]}"
    _fill(kafka_bootstrap, topic, [(12345, 1), (12345, 2)], partitions=1)

    result = _tail(kafka_bootstrap, "--topic", topic, "--until-end")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_until_end_on_an_empty_topic_exits_at_once(kafka_bootstrap: str) -> None:
    topic = f"it.tail.{uuid.uuid4().hex[:10]}"
    _fill(kafka_bootstrap, topic, [], partitions=2)

    result = _tail(kafka_bootstrap, "--topic", topic, "--from-beginning", "--until-end")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
