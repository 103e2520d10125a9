"""What Kafka refuses is decided where Kafka answers: an event larger than the broker takes
goes to the dead-letter topic (cut to fit, with its id, partner, operation and size), the page
proceeds and readiness stays truthful."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

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


def test_an_oversized_session_is_dead_lettered_and_the_feed_goes_on(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    huge = session(2, start)
    huge["guests"] = [
        {"type": "guest", "status": "C", "name": f"guest {i}", "email": f"g{i}@example.com",
         "ip": "203.0.113.9", "location": {"city": "Boston", "region": "MA", "countryCode": "US"}}
        for i in range(10_000)
    ]  # fmt: skip
    records = [session(1, start), huge, session(3, start)]

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        return json_answer(listing(records))

    with HostileServer(counts_or(answer)).running() as upstream:
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
