"""Kafka goes away: nothing is lost, the cursor waits, polling pauses, readiness tells the
truth, and everything resumes by itself when the broker is back."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import (
    PARTNER_ID,
    Consumed,
    Emulator,
    LocalBroker,
    PollerRun,
    Topics,
    consume,
    http_get,
    kill,
    metric,
    operator_port,
    running,
    wait_until,
)
from tests.integration.test_kafka_refusals import create_topics


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, which it may stop and start."""
    with running(LocalBroker()) as broker:
        yield broker


def outage_poller(tmp_path: Path, emulator: Emulator, broker: LocalBroker) -> PollerRun:
    poller = PollerRun(tmp_path, emulator.url, broker.bootstrap, Topics.unique())
    poller.settings["glance"] = {"page_size": 50}
    poller.settings["completed"] = {"start_lookback": "5h", "interval": "300ms"}
    # Quick to notice: short produce timeouts and frequent broker checks.
    poller.settings["kafka"] = {"request_timeout_ms": 3000}
    poller.settings["health"] = {"broker_check_interval": "1s", "broker_max_silence": "5s"}
    poller.settings["retry"] = {"initial_delay": "100ms", "max_delay": "1s"}
    poller.settings["counts"] = {"enabled": False}
    return poller


def restart_at_random_moments(broker: LocalBroker, rng: random.Random, times: int) -> None:
    """Stop (half the time by SIGKILL) and start the broker ``times`` times, each after and
    for 0.5-3 s."""
    for _ in range(times):
        time.sleep(rng.uniform(0.5, 3.0))
        if rng.random() < 0.5:
            broker.kill()
        else:
            broker.stop()
        time.sleep(rng.uniform(0.5, 3.0))
        broker.start()


def assert_one_ce_id_each(records: list[Consumed]) -> None:
    """At least once, but a session re-sent always carries the same ``ce_id``."""
    ce_ids: dict[str | None, set[str]] = {}
    for record in records:
        ce_ids.setdefault(record.key, set()).add(record.headers["ce_id"])
    assert all(len(ids) == 1 for ids in ce_ids.values()), "a session re-sent under another id"


def ready(port: int) -> tuple[bool, list[str]]:
    status, body = http_get(port, "/readyz")
    return status == 200, orjson.loads(body)["problems"]


def completed_calls(emulator: Emulator) -> int:
    return int(emulator.stats().get("PartnerCompletedSessions", {}).get("total", 0))


def test_a_thirty_second_outage_mid_stream_loses_nothing(
    tmp_path: Path, emulator: Emulator, own_broker: LocalBroker
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 2000,
            "from": "2026-03-10T08:00:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 600,
            "seed": 31,
        },
    )
    upstream = {s["id"] for s in emulator.sessions("ended")}
    emulator.admin(
        "POST",
        "/admin/faults",
        {
            "calls": [
                {
                    "kind": "slow",
                    "operation": "PartnerCompletedSessions",
                    "count": 1000,
                    "delay": 1.0,
                }
            ]
        },
    )
    poller = outage_poller(tmp_path, emulator, own_broker)
    daemon = poller.start()
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None
        # (Not ready yet: the first tick of the completed stream is the whole 40-page scan.)
        wait_until(
            lambda: (
                len(consume(own_broker.bootstrap, poller.topics.completed, idle=0.3, timeout=10))
                >= 300
            ),
            90,
            "the first pages",
        )
        own_broker.stop()
        outage_started = time.monotonic()
        assert completed_calls(emulator) < len(upstream) // 50, "the scan ended before the outage"
        wait_until(lambda: any("kafka" in p for p in ready(port)[1]), 30, "/readyz to blame Kafka")
        # Polling pauses: the page in hand waits for Kafka, no further page is fetched.
        time.sleep(3)
        paused_at = completed_calls(emulator)
        _, body = http_get(port, "/metrics")
        # Memory stays bounded: at most one page (and its started events) is unacknowledged.
        assert metric(body.decode(), "glance_poller_unacknowledged_events") <= 2 * 50
        remaining = 30 - (time.monotonic() - outage_started)
        time.sleep(max(0.0, remaining))
        assert completed_calls(emulator) == paused_at, "polling went on while Kafka was down"

        own_broker.start()
        wait_until(
            lambda: (
                {
                    r.key
                    for r in consume(
                        own_broker.bootstrap, poller.topics.completed, idle=0.3, timeout=10
                    )
                }
                >= {str(i) for i in upstream}
            ),
            120,
            "every session after the outage",
            interval=1.0,
        )
        wait_until(lambda: ready(port)[0], 60, "/readyz to turn true again")
        _, body = http_get(port, "/metrics")
        text = body.decode()
        assert metric(text, "glance_poller_produce_errors_total") > 0
        assert metric(text, "glance_poller_retries_total", target="kafka") > 0
        assert metric(text, "glance_poller_broker_reachable") == 1
    finally:
        code = kill(daemon, signal.SIGTERM)
    assert code == 0
    records = consume(own_broker.bootstrap, poller.topics.completed, expect=len(upstream))
    copies: dict[str, set[str]] = {}
    for record in records:
        copies.setdefault(record.key or "", set()).add(record.headers["ce_id"])
    assert set(copies) == {str(i) for i in upstream}
    assert all(len(ids) == 1 for ids in copies.values()), "a re-sent event changed its id"
    duplicates = sum(n - 1 for n in Counter(r.key for r in records).values())
    assert duplicates <= 2 * 50, "only the batch in flight at the outage may be re-sent"
    log = poller.log_text()
    assert (
        log.count("kafka is not acknowledging") == 1 and log.count("kafka acknowledges again") == 1
    )


def test_the_broker_is_down_when_the_daemon_starts(
    tmp_path: Path, emulator: Emulator, own_broker: LocalBroker
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 300,
            "from": "2026-03-10T10:00:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 600,
            "seed": 32,
        },
    )
    upstream = {str(s["id"]) for s in emulator.sessions("ended")}
    own_broker.stop()
    poller = outage_poller(tmp_path, emulator, own_broker)
    daemon = poller.start()
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None
        wait_until(
            lambda: "kafka is not acknowledging" in poller.log_text(),
            60,
            "the first failed produce",
        )
        assert not ready(port)[0]
        assert completed_calls(emulator) <= 2, "one page is held, one fetched ahead, no more"
        own_broker.start()
        wait_until(
            lambda: (
                {
                    r.key
                    for r in consume(
                        own_broker.bootstrap, poller.topics.completed, idle=0.3, timeout=10
                    )
                }
                >= upstream
            ),
            120,
            "every session once Kafka is up",
            interval=1.0,
        )
        wait_until(lambda: ready(port)[0], 60, "readiness")
    finally:
        assert kill(daemon, signal.SIGTERM) == 0


def test_ten_broker_restarts_at_random_moments_of_a_backlog_lose_nothing(
    tmp_path: Path, emulator: Emulator, own_broker: LocalBroker
) -> None:
    """The stall found by outside runs: after a broker restart on the same data the producer's
    idempotence state was rejected (OutOfOrderSequenceNumber) and retried forever. A producer
    the broker no longer accepts is replaced; what it had not delivered goes again with the same
    ``ce_id``."""
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 4000,
            "from": "2026-03-10T07:10:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 600,
            "seed": 37,
        },
    )
    upstream = {str(s["id"]) for s in emulator.sessions("ended")}
    # A slow upstream keeps the backlog flowing through all ten restarts.
    slow = {"p": 1.0, "kinds": ["slow"], "seed": 3, "params": {"delay": 1.0}}
    emulator.admin("POST", "/admin/faults", {"rate": slow})
    poller = outage_poller(tmp_path, emulator, own_broker)
    poller.settings["started"] = {"enabled": False}
    poller.settings["reconcile"] = {"enabled": False}
    daemon = poller.start()
    try:
        restart_at_random_moments(own_broker, random.Random(20261201), 10)
        emulator.admin("DELETE", "/admin/faults")
        wait_until(
            lambda: (
                len({r.key for r in consume(poller.bootstrap, poller.topics.completed, idle=0.5)})
                >= len(upstream)
            ),
            timeout=180,
            what="every session after the tenth restart",
            interval=2.0,
        )
        assert daemon.poll() is None, poller.log_text()[-3000:]
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
    records = consume(poller.bootstrap, poller.topics.completed, expect=len(upstream))
    assert {r.key for r in records} == upstream
    assert_one_ce_id_each(records)


def test_broker_restarts_while_the_topic_refuses_some_events_lose_nothing_and_wedge_nothing(
    tmp_path: Path, emulator: Emulator, own_broker: LocalBroker
) -> None:
    """Each refusal replaces the producer, and so does each restart: both at once, with pages
    in flight, must still give every session that fits (under one ``ce_id``) and a dead letter
    for every one the topic refuses, and nothing else."""
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 1500,
            "from": "2026-03-10T07:10:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 600,
            "seed": 41,
        },
    )
    fits = {str(s["id"]) for s in emulator.sessions("ended")}
    # Spread over the range, each about 30 kB: above the topic's own limit below.
    large = [
        {
            "startTime": f"2026-03-10T{7 + i // 8:02d}:{(i * 7) % 60:02d}:00Z",
            "endTime": f"2026-03-10T{7 + i // 8:02d}:{(i * 7) % 60:02d}:40Z",
            "padding": "x" * 30_000,
        }
        for i in range(36)
    ]
    refused = {
        str(i)
        for i in emulator.admin(
            "POST", "/admin/sessions", {"partnerId": PARTNER_ID, "sessions": large}
        )["ids"]
    }
    slow = {"p": 1.0, "kinds": ["slow"], "seed": 5, "params": {"delay": 0.5}}
    emulator.admin("POST", "/admin/faults", {"rate": slow})
    poller = outage_poller(tmp_path, emulator, own_broker)
    poller.settings["started"] = {"enabled": False}
    poller.settings["reconcile"] = {"enabled": False}
    create_topics(own_broker.bootstrap, {poller.topics.completed: 20_000})

    def letters() -> set[str]:
        found = consume(poller.bootstrap, poller.topics.dlq, idle=0.5)
        return {r.headers["dlq_session_id"] for r in found}

    daemon = poller.start()
    try:
        restart_at_random_moments(own_broker, random.Random(20261202), 3)
        emulator.admin("DELETE", "/admin/faults")

        wait_until(
            lambda: (
                len({r.key for r in consume(poller.bootstrap, poller.topics.completed, idle=0.5)})
                >= len(fits)
                and letters() >= refused
            ),
            timeout=180,
            what="every session that fits, and a letter for every one refused",
            interval=2.0,
        )
        assert daemon.poll() is None, poller.log_text()[-3000:]
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
    records = consume(poller.bootstrap, poller.topics.completed, expect=len(fits))
    assert {r.key for r in records} == fits
    assert_one_ce_id_each(records)
    assert letters() == refused
