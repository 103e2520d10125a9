"""Fifty partners in one daemon: each partner's sessions arrive once, as that partner's, and
nothing else (their ticks, spread by the jitter of every wait, share one process, one producer
and one state file)."""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta

from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    PollerRun,
    consume,
    http_get,
    kill,
    log_events,
    metric,
    operator_port,
    wait_until,
)
from tests.integration.test_lifecycle import iso

PARTNERS = 50
PER_PARTNER = 6


def test_fifty_partners_in_one_process_each_get_their_own_sessions_and_nothing_else(
    emulator: Emulator, poller: PollerRun
) -> None:
    others = {900000 + i: f"key-{i:02d}-c3e1" for i in range(1, PARTNERS)}
    for partner_id, key in others.items():
        emulator.admin("POST", "/admin/partners", {"partnerId": partner_id, "apiKey": key})
    poller.other_partners = others
    partners = [PARTNER_ID, *others]
    for n, partner_id in enumerate(partners):
        emulator.admin(
            "POST",
            "/admin/traffic",
            {
                "partnerId": partner_id,
                "count": PER_PARTNER,
                "from": "2026-03-10T10:30:00Z",
                "until": "2026-03-10T11:00:00Z",
                "maxDuration": 900,
                "seed": n,
            },
        )
    expected = {p: {s["id"] for s in emulator.sessions("ended", partner_id=p)} for p in partners}
    assert all(len(ids) == PER_PARTNER for ids in expected.values())
    assert len(set().union(*expected.values())) == PARTNERS * PER_PARTNER
    poller.settings["completed"] = {"interval": "2s"}
    poller.settings["reconcile"] = {"interval": "5s"}
    poller.settings["started"] = {"interval": "2s"}
    poller.settings["counts"] = {"enabled": False}
    poller.settings["service"] = {"start_jitter": "1s"}

    daemon = poller.start()
    try:
        records = consume(
            poller.bootstrap, poller.topics.completed, expect=PARTNERS * PER_PARTNER, timeout=120
        )
    finally:
        code = kill(daemon, signal.SIGTERM)
    assert code == 0, poller.log_text()[-3000:]
    (started,) = log_events(poller.log_text(), "glance-poller started")
    assert sorted(started["partners"]) == sorted(partners)

    got: dict[int, list[int]] = defaultdict(list)
    for record in records:
        partner = record.value["partnerId"]
        assert record.headers["ce_source"] == f"/glance/partners/{partner}"
        got[partner].append(int(str(record.key)))
    for partner_id in partners:
        ids = Counter(got[partner_id])
        assert set(ids) == expected[partner_id], partner_id
        assert max(ids.values()) == 1, partner_id
    assert set(got) == set(partners)
    # Their started events too: each partner's own sessions, once.
    started_events = consume(
        poller.bootstrap, poller.topics.started, expect=PARTNERS * PER_PARTNER, timeout=60
    )
    owners = Counter((r.value["partnerId"], int(str(r.key))) for r in started_events)
    assert max(owners.values()) == 1
    assert set(owners) == {(p, i) for p, ids in expected.items() for i in ids}
    assert consume(poller.bootstrap, poller.topics.dlq, idle=0.5) == []


def test_no_partner_waits_for_a_connection_another_partner_holds(
    emulator: Emulator, poller: PollerRun
) -> None:
    """A slow service and more partners than a default HTTP pool's 100 connections: every
    partner's first call is in flight at once, none queued behind the others'."""
    many = 150
    others = {910000 + i: f"key-{i:03d}-9f2d" for i in range(1, many)}
    for partner_id, key in others.items():
        emulator.admin("POST", "/admin/partners", {"partnerId": partner_id, "apiKey": key})
    poller.other_partners = others
    emulator.admin("POST", "/admin/service", {"latency": "5s"})
    poller.settings["glance"] = {"request_timeout": "60s"}
    poller.settings["started"] = {"enabled": False}
    poller.settings["counts"] = {"enabled": False}
    poller.settings["reconcile"] = {"enabled": False}
    poller.settings["service"] = {"start_jitter": "0s"}
    emulator.admin("POST", "/admin/stats/reset")
    daemon = poller.start()
    try:
        peak = 0
        for _ in range(120):
            peak = emulator.admin("GET", "/admin/stats")["allPartners"]["peakConcurrent"]
            if peak >= many or daemon.poll() is not None:
                break
            time.sleep(0.25)
    finally:
        code = kill(daemon, signal.SIGTERM)
    assert peak >= many, f"only {peak} of {many} partners' calls were in flight together"
    assert code == 0, poller.log_text()[-3000:]


def test_a_poll_that_finds_nothing_writes_no_log_line_and_one_that_reads_does(
    emulator: Emulator, poller: PollerRun
) -> None:
    """Three hundred quiet partners polled every 5 s would write 60 lines a second, most of a
    quiet daemon's CPU and gigabytes of logs a day, all saying nothing: a tick of the completed
    or started stream that read nothing is logged at debug (and counted, as every tick is)."""
    others = {900000 + i: f"key-{i:02d}-c3e1" for i in range(1, 5)}
    for partner_id, key in others.items():
        emulator.admin("POST", "/admin/partners", {"partnerId": partner_id, "apiKey": key})
    poller.other_partners = others
    poller.settings["completed"] = {"interval": "300ms"}
    poller.settings["started"] = {"interval": "300ms"}
    poller.settings["reconcile"] = {"enabled": False}
    poller.settings["counts"] = {"enabled": False}

    def ticks(stream: str) -> float:
        port = operator_port(poller.log_text())
        if port is None:
            return 0.0
        text = http_get(port, "/metrics")[1].decode()
        return metric(text, "glance_poller_ticks_total", stream=stream, result="ok")

    daemon = poller.start()
    try:
        wait_until(lambda: ticks("completed") >= 30 and ticks("started") >= 30, 60, "quiet ticks")
        assert log_events(poller.log_text(), "tick", stream="completed") == []
        assert log_events(poller.log_text(), "tick", stream="started") == []
        now = datetime.fromisoformat(emulator.admin("GET", "/admin/clock")["now"])
        session = {
            "startTime": iso(now + timedelta(seconds=10)),
            "endTime": iso(now + timedelta(seconds=40)),
        }
        (added,) = emulator.admin(
            "POST", "/admin/sessions", {"partnerId": PARTNER_ID, "sessions": [session]}
        )["ids"]
        emulator.admin("POST", "/admin/clock", {"advance": 60})
        assert len(consume(poller.bootstrap, poller.topics.completed, expect=1, timeout=60)) == 1
        wait_until(
            lambda: bool(log_events(poller.log_text(), "tick", stream="completed")), 30, "its tick"
        )
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
    logged = log_events(poller.log_text(), "tick", stream="completed")
    assert logged and all(t["records"] > 0 or t["departed_fetched"] > 0 for t in logged), logged
    assert {t["partner"] for t in logged} == {PARTNER_ID}, f"session {added} is {PARTNER_ID}'s"
