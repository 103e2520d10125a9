"""Fifty partners in one daemon: each partner's sessions arrive once, as that partner's, and
nothing else (their ticks, spread by the jitter of every wait, share one process, one producer
and one state file)."""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict

from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    PollerRun,
    consume,
    kill,
    log_events,
)

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
