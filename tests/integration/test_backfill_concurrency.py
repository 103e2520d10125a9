"""A backfill's windows fetched at once against the emulator over HTTP, into a real broker.

Interrupted (SIGINT) with four windows in flight and resumed, every session arrives exactly
once (a SIGINT settles every page handed to Kafka); against a service that refuses more than
two calls at once (429), the backfill lowers its concurrency to what the service takes and still
delivers every session exactly once.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from typing import Any

from poller.state import StateStore
from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    PollerRun,
    consume,
    kill,
    log_events,
    wait_until,
)
from tests.integration.test_backfill import backfill, start_backfill
from tests.integration.test_completed_feed import expected_value

SINCE = "2025-11-20T00:00:00Z"
UNTIL = "2026-01-29T00:00:00Z"
CLOCK = "2026-01-30T12:00:00Z"
CONCURRENCY = 4
RANGE_CURSOR = re.compile(r"^backfill:[^#]+(#[^#]+)?$")


def _sessions(emulator: Emulator, count: int, seed: int) -> dict[int, dict[str, Any]]:
    """``count`` ended sessions inside the backfill's range, as the emulator lists them."""
    emulator.admin("POST", "/admin/clock", {"set": CLOCK})
    created = emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": count,
            "from": SINCE,
            "until": "2026-01-28T23:00:00Z",
            "maxDuration": 600,
            "seed": seed,
        },
    )
    assert created["created"] == count
    upstream = {s["id"]: s for s in emulator.sessions("ended")}
    assert len(upstream) == count
    return upstream


def _configure(poller: PollerRun) -> None:
    poller.settings["glance"] = {"page_size": 20}
    poller.settings["backfill"] = {"concurrency": CONCURRENCY}


def _exactly_once(poller: PollerRun, upstream: dict[int, dict[str, Any]]) -> None:
    records = consume(poller.bootstrap, poller.topics.completed, expect=len(upstream))
    counts = Counter(int(str(r.key)) for r in records)
    assert set(counts) == set(upstream), (
        sorted(set(upstream) - set(counts))[:10],
        sorted(set(counts) - set(upstream))[:10],
    )
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:10]
    for record in records:
        assert record.value == expected_value(upstream[int(str(record.key))])


def _windows_in_progress(poller: PollerRun) -> list[dict[str, Any]]:
    """The backfill's windows that have committed a page and not yet finished, as its state
    says (read while the backfill runs, as ``state show`` does)."""
    path = poller.workdir / "state.backfill.sqlite3"
    if not path.exists():
        return []
    state = StateStore.read_only(path)
    try:
        cursors = state.snapshot()["streams"]
    finally:
        state.close()
    assert all(RANGE_CURSOR.match(c["stream"]) for c in cursors), cursors
    return [c for c in cursors if "#" in c["stream"] and c["scanInProgress"]]


def _partner_load(emulator: Emulator) -> dict[str, int]:
    return dict(emulator.admin("GET", "/admin/stats")["partners"][str(PARTNER_ID)])


def test_interrupted_with_four_windows_in_flight_and_resumed_every_session_arrives_once(
    emulator: Emulator, poller: PollerRun
) -> None:
    # Windows of about 15 pages, so that several are part-way at once.
    upstream = _sessions(emulator, 3000, seed=5)
    _configure(poller)
    # Every call takes a while, as across the internet: the windows overlap.
    emulator.admin("POST", "/admin/service", {"latency": "100ms"})
    emulator.admin("POST", "/admin/stats/reset")

    first = start_backfill(poller, "backfill-1.log")
    # The interrupt waits for the state to show three windows part-way, not for a count of
    # sessions: on a busy machine the windows' first pages land at different times.
    wait_until(lambda: len(_windows_in_progress(poller)) >= 3, 90, "three windows part-way", 0.1)
    assert kill(first, signal.SIGINT) == 130, "interrupted, not done"
    first_log = (poller.workdir / "backfill-1.log").read_text()
    (started,) = log_events(first_log, "backfill starting")
    assert started["concurrency"] == CONCURRENCY and started["windows"] > CONCURRENCY
    (stopped,) = log_events(first_log, "interrupted; run the same command to resume")
    assert 0 < stopped["windows_left"] <= started["windows"]
    # Windows really were fetched at once, never more than the setting.
    assert 2 <= _partner_load(emulator)["peakConcurrent"] <= CONCURRENCY
    # Every window in flight at the interrupt kept its own place (one may have finished its
    # last page while the interrupt settled it).
    assert len(_windows_in_progress(poller)) >= 2

    second = backfill(poller)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    (resumed,) = log_events(second.stdout, "backfill resuming")
    assert resumed["already_done"] == stopped["emitted"] + stopped["dead_letters"]
    (done,) = log_events(second.stdout, "backfill complete")
    assert resumed["already_done"] + done["emitted"] == len(upstream)
    progress = log_events(second.stdout, "backfill progress")
    assert progress and all("windows_in_flight" in line for line in progress)
    assert progress[-1]["windows_done"] == progress[-1]["windows"]
    _exactly_once(poller, upstream)


def test_against_a_service_that_takes_two_calls_at_once_the_concurrency_settles_at_two(
    emulator: Emulator, poller: PollerRun
) -> None:
    upstream = _sessions(emulator, 1200, seed=8)
    _configure(poller)
    emulator.admin("POST", "/admin/service", {"latency": "30ms", "maxConcurrent": 2})
    emulator.admin("POST", "/admin/stats/reset")

    result = backfill(poller)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    load = _partner_load(emulator)
    assert load["throttled"] > 0, "the service never refused a call: nothing was tested"
    lowered = log_events(result.stdout, "backfill concurrency lowered")
    assert lowered, result.stdout[-3000:]
    assert lowered[0]["concurrency"] <= 2 and lowered[0]["ceiling"] == CONCURRENCY
    (done,) = log_events(result.stdout, "backfill complete")
    assert done["concurrency"] <= 2
    assert done["throttled"] > 0
    _exactly_once(poller, upstream)
    # And nothing else: no dead letters.
    assert consume(poller.bootstrap, poller.topics.dlq, idle=0.5) == []
