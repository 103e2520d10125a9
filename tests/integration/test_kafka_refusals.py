"""What Kafka refuses is decided where Kafka answers: an event larger than the broker takes
goes to the dead-letter topic (cut to fit, with its id, partner, operation and size), the page
proceeds and readiness stays truthful."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.harness import (
    PARTNER_ID,
    consume,
    http_get,
    kill,
    log_events,
    operator_port,
    wait_until,
)
from tests.integration.hostile import HostileServer, counts_or, json_answer, listing, session
from tests.integration.test_hostile_upstream import daemon


def serving_a_large_session(guests: int) -> HostileServer:
    """An upstream whose every listing is one page: session 1, session 2 with ``guests``
    guests (400: about 60 kB; 10,000: more than Kafka's default 1 MB), session 3."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    large = session(2, start)
    large["guests"] = [
        {"type": "guest", "status": "C", "name": f"guest {i}", "email": f"g{i}@example.com",
         "ip": "203.0.113.9", "location": {"city": "Boston", "region": "MA", "countryCode": "US"}}
        for i in range(guests)
    ]  # fmt: skip
    records = [session(1, start), large, session(3, start)]
    return HostileServer(counts_or(lambda operation, params: json_answer(listing(records))))


def test_an_oversized_session_is_dead_lettered_and_the_feed_goes_on(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with serving_a_large_session(guests=10_000).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap, max_answer_bytes=8 << 20)
        run.settings["completed"]["interval"] = "1s"
        process = run.start()
        try:
            wait_until(
                lambda: len(consume(kafka_bootstrap, run.topics.completed, idle=0.3)) == 2,
                60,
                "the two sessions that fit",
            )
            port = operator_port(run.log_text())
            assert port is not None
            wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, "ready")
            metrics_text = http_get(port, "/metrics")[1].decode()
        finally:
            assert kill(process, signal.SIGTERM) == 0
    completed = consume(kafka_bootstrap, run.topics.completed, expect=2)
    assert sorted(r.key for r in completed) == ["1", "3"]
    (letter,) = consume(kafka_bootstrap, run.topics.dlq, expect=1)
    headers = letter.headers
    assert headers["dlq_session_id"] == "2"
    assert headers["dlq_partner_id"] == str(PARTNER_ID)
    assert headers["dlq_operation"] == "PartnerCompletedSessions"
    assert int(headers["dlq_size"]) > 1_048_576 and headers["dlq_truncated"] == "true"
    assert "kafka" in headers["dlq_reason"]
    assert letter.value["sessionId"] == 2 and letter.value["truncated"] is True
    assert letter.value["value"].startswith('{"partnerId":12345')
    assert letter.value["size"] == int(headers["dlq_size"])
    assert 'glance_poller_dead_letters_total{partner="12345",stream="completed"} 1.0' in (
        metrics_text
    )
    assert "kafka is not acknowledging" not in run.log_text()
    (warning,) = log_events(
        run.log_text(), "kafka cannot take an event: sent to the dead-letter topic"
    )
    assert warning["session_id"] == 2


def create_topics(bootstrap: str, limits: dict[str, int], *, compacted: Sequence[str] = ()) -> None:
    """Topics with their own ``max.message.bytes``, below what the producer is allowed, and
    topics compacted (``cleanup.policy=compact``: the broker refuses a record without a key)."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(limit)})
                    for name, limit in limits.items()
                ]
                + [
                    NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})
                    for name in compacted
                ]
            )
        finally:
            await admin.close()

    asyncio.run(create())


def test_a_topic_whose_own_limit_is_below_the_producers_dead_letters_what_it_refuses(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with serving_a_large_session(guests=400).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        create_topics(kafka_bootstrap, {run.topics.completed: 20_000})
        result = run.once()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "kafka is not acknowledging" not in result.stdout, "a refusal is not Kafka failing"
    completed = consume(kafka_bootstrap, run.topics.completed, expect=2)
    assert sorted(r.key for r in completed) == ["1", "3"]
    (letter,) = consume(kafka_bootstrap, run.topics.dlq, expect=1)
    assert letter.headers["dlq_session_id"] == "2"
    assert int(letter.headers["dlq_size"]) > 50_000
    assert letter.headers["dlq_truncated"] == "true"
    assert letter.value["value"].startswith('{"partnerId":12345')


def test_an_event_whose_letter_the_dead_letter_topic_refuses_too_is_met_again(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with serving_a_large_session(guests=400).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        run.settings["completed"]["interval"] = "1s"
        create_topics(kafka_bootstrap, {run.topics.completed: 20_000, run.topics.dlq: 8_000})
        process = run.start()
        try:
            wait_until(
                lambda: len(log_events(run.log_text(), "tick", stream="completed")) >= 3,
                60,
                "three completed ticks",
            )
        finally:
            assert kill(process, signal.SIGTERM) == 0
    completed = consume(kafka_bootstrap, run.topics.completed, expect=2)
    assert sorted(r.key for r in completed) == ["1", "3"], "each once"
    assert consume(kafka_bootstrap, run.topics.dlq, idle=1.0) == []
    refusals = [
        line
        for line in run.log_text().splitlines()
        if '"level":"error"' in line and '"session_id":2' in line
    ]
    assert len(refusals) >= 2, "not remembered: the next tick meets it and says so again"


def test_a_record_without_an_id_reaches_a_compacted_dead_letter_topic_and_the_feed_goes_on(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Found by an adversary: a compacted dead-letter topic refuses a record without a key,
    and the letter of a record without an id had none. The broker's refusal (an unknown error
    to aiokafka) was retried for ever, every partner's publishing stopped behind it, and
    /readyz said "kafka: unreachable". Every letter has a key: its id, or its digest."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    no_id = {k: v for k, v in session(0, start).items() if k != "id"}
    records = [session(1, start), no_id, session(3, start)]
    with HostileServer(counts_or(lambda op, params: json_answer(listing(records)))).running() as up:
        run = daemon(tmp_path, up.url, kafka_bootstrap)
        create_topics(kafka_bootstrap, {}, compacted=[run.topics.dlq])
        result = run.once()
    assert result.returncode == 0, result.stdout[-3000:]
    completed = consume(kafka_bootstrap, run.topics.completed, expect=2)
    assert sorted(r.key for r in completed) == ["1", "3"]
    (letter,) = consume(kafka_bootstrap, run.topics.dlq, expect=1)
    assert letter.key is not None and letter.key.startswith("record-")
    assert letter.value == no_id
