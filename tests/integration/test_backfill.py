"""``glance-poller backfill`` end to end: emulator over HTTP -> backfill process -> real Kafka.

A 70-day range (10 windows of a week, four fetched at once: the default ``backfill.concurrency``)
is replayed with an interrupt (SIGINT) and a kill (SIGKILL) in the middle, resumed each time,
and compared with what the emulator holds; the live daemon's state file, locked by this test
for the whole backfill, is untouched.
"""

from __future__ import annotations

import resource
import signal
import subprocess
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from poller.backfill import RESUME_HINT
from poller.events import event_id
from poller.state import StateStore
from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    Consumed,
    Emulator,
    PollerRun,
    consume,
    kill,
    log_events,
    wait_until,
)
from tests.integration.test_completed_feed import expected_value
from tests.integration.test_kafka_outage import assert_one_ce_id_each

SINCE = "2025-11-20T00:00:00Z"
UNTIL = "2026-01-29T00:00:00Z"  # 70 days, about 54 pages: a window per 8 pages, so weeks
CLOCK = "2026-01-30T12:00:00Z"
PAGE_SIZE = 50
CONCURRENCY = 4  # the default
LISTING = "PartnerCompletedSessions"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _in_range(start_time: str) -> bool:
    return _instant(SINCE) <= _instant(start_time) < _instant(UNTIL)


def backfill_command(poller: PollerRun, *extra: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "poller",
        "backfill",
        "--config",
        str(poller.config_file()),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        *extra,
    ]


def backfill(poller: PollerRun, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        backfill_command(poller, *extra),
        capture_output=True,
        text=True,
        env=poller.environment(),
        timeout=120,
        check=False,
    )


def start_backfill(poller: PollerRun, log_name: str) -> subprocess.Popen[bytes]:
    with (poller.workdir / log_name).open("wb") as log:
        return subprocess.Popen(
            backfill_command(poller), stdout=log, stderr=subprocess.STDOUT, env=poller.environment()
        )


def served_pages(emulator: Emulator) -> int:
    """Listing calls the emulator answered since its counters were last reset."""
    return int(emulator.stats().get(LISTING, {}).get("ok", 0))


def test_a_70_day_backfill_interrupted_killed_and_resumed_delivers_every_session_once(
    emulator: Emulator, poller: PollerRun, completed_schema: Any
) -> None:
    emulator.admin("POST", "/admin/clock", {"set": CLOCK})
    created = emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 3000,
            # Sessions before, inside and after the range.
            "from": "2025-11-15T00:00:00Z",
            "until": "2026-01-30T00:00:00Z",
            "maxDuration": 600,
            "seed": 21,
        },
    )
    assert created["created"] == 3000
    upstream = {s["id"]: s for s in emulator.sessions("ended")}
    assert len(upstream) == 3000, "every generated session should have ended by the clock"
    in_range = {i for i, s in upstream.items() if _in_range(s["record"]["startTime"])}
    assert 2500 < len(in_range) < 3000
    # Two sessions of the range are damaged whenever they are listed: dead letters, once.
    bad = set(sorted(in_range)[100:102])
    emulator.admin(
        "POST",
        "/admin/faults",
        {"calls": [{"kind": "mistyped", "operation": LISTING, "sessionIds": sorted(bad)}]},
    )
    poller.settings["glance"] = {"page_size": PAGE_SIZE}
    # The live daemon's first start reads from CLOCK - 36 h, exactly the range's end (a first
    # start reads nothing before its lookback): the sessions after the range are its own.
    poller.settings["completed"] = {"start_lookback": "36h"}
    backfill_state = poller.workdir / "state.backfill.sqlite3"

    # --dry-run: counts pages and sessions, produces nothing, writes no state.
    dry = backfill(poller, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    (summary,) = log_events(
        dry.stdout, "backfill dry run: nothing was produced and no state was written"
    )
    assert summary["sessions"] == summary["sessions_upstream"] == len(in_range)
    assert summary["windows"] == 10
    pages_total = summary["pages"]
    assert pages_total >= len(in_range) // PAGE_SIZE
    assert consume(poller.bootstrap, poller.topics.completed, idle=0.5) == []
    assert consume(poller.bootstrap, poller.topics.dlq, idle=0.5) == []
    assert not backfill_state.exists()

    # The live daemon runs first, so that a live cursor exists (its events are outside the range).
    live_run = poller.once()
    assert live_run.returncode == 0, live_run.stdout + live_run.stderr
    live_events = consume(poller.bootstrap, poller.topics.completed, idle=1.0)
    assert live_events, "the live daemon should have published the sessions after the range"
    assert not any(_in_range(r.value["session"]["startTime"]) for r in live_events)
    # Held (exclusively locked) by this test for the whole backfill: the backfill never needs it.
    live_state = StateStore.open(poller.state_path)
    try:
        live_before = live_state.snapshot()["streams"]
        assert any(s["stream"] == "completed" for s in live_before)

        emulator.admin("POST", "/admin/stats/reset")
        emulator.admin(
            "POST",
            "/admin/faults",
            # Slow enough that the interrupt and the kill, each noticed by consuming the
            # topic, land mid-range however deep the scan reads ahead.
            {"calls": [{"kind": "slow", "operation": LISTING, "count": 1000, "delay": 0.4}]},
        )
        pages_by_run: list[int] = []

        def range_events() -> int:
            records = consume(poller.bootstrap, poller.topics.completed, idle=0.2, timeout=10)
            return len(records) - len(live_events)

        # 1. SIGINT mid-range: the page in flight is finished, then a clean exit 0.
        first = start_backfill(poller, "backfill-1.log")
        wait_until(lambda: range_events() >= 500, 60, "500 sessions of the range", 0.2)
        assert kill(first, signal.SIGINT) == 130, "interrupted, not done"
        first_log = (poller.workdir / "backfill-1.log").read_text()
        (stopped,) = log_events(first_log, "interrupted; run the same command to resume")
        assert stopped["emitted"] >= 500 and stopped["emitted"] < len(in_range)
        pages_by_run.append(served_pages(emulator))
        emulator.admin("POST", "/admin/stats/reset")

        # 2. Resumed, then SIGKILLed further on: at most the page in flight is sent again.
        second = start_backfill(poller, "backfill-2.log")
        wait_until(lambda: range_events() >= 1500, 60, "1500 sessions of the range", 0.2)
        assert kill(second, signal.SIGKILL) == -signal.SIGKILL
        second_log = (poller.workdir / "backfill-2.log").read_text()
        (resumed,) = log_events(second_log, "backfill resuming")
        # The ids committed so far: events and dead letters.
        assert resumed["already_done"] == stopped["emitted"] + stopped["dead_letters"]
        assert range_events() < len(in_range), "the kill came too late to prove anything"
        pages_by_run.append(served_pages(emulator))
        emulator.admin("POST", "/admin/stats/reset")

        # 3. Resumed to the end.
        third = backfill(poller)
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        (resumed,) = log_events(third.stdout, "backfill resuming")
        assert resumed["already_done"] > stopped["emitted"] + stopped["dead_letters"]
        first_window = log_events(third.stdout, "backfill window")[0]
        assert (first_window["window_start"], first_window["next_id"]) != (
            _instant(SINCE).isoformat(),
            0,
        ), "the resumed run started the range over"
        (done,) = log_events(third.stdout, "backfill complete")
        assert done["dead_letters"] + done["emitted"] + resumed["already_done"] == len(in_range)
        # Without a terminal, progress is logged (at least at the end of every window).
        progress = log_events(third.stdout, "backfill progress")
        assert progress, third.stdout[-3000:]
        last = progress[-1]
        assert last["sessions"] == last["total"] == len(in_range)
        assert last["percent"] == 100.0 and last["eta_seconds"] == 0
        assert last["pages"] > 0 and last["sessions_per_second"] > 0
        pages_by_run.append(served_pages(emulator))
        # Resumed runs skip the pages already done: in each window in flight, at most the two
        # pages in flight at the kill and one fetched but abandoned at the interrupt are read
        # twice.
        assert all(pages > 0 for pages in pages_by_run), pages_by_run
        assert sum(pages_by_run) <= pages_total + 3 * CONCURRENCY, (pages_by_run, pages_total)

        # 4. The same command again: nothing to do.
        emulator.admin("POST", "/admin/stats/reset")
        again = backfill(poller)
        assert again.returncode == 0, again.stdout + again.stderr
        assert log_events(again.stdout, "backfill already complete: nothing to do")
        assert served_pages(emulator) == 0

        live_after = live_state.snapshot()["streams"]
    finally:
        live_state.close()
    assert live_after == live_before
    assert backfill_state.exists()
    shown = subprocess.run(
        [PYTHON, "-m", "poller", "state", "show", "--config", str(poller.config_file())],
        capture_output=True,
        text=True,
        env=poller.environment(),
        timeout=60,
        check=True,
    )
    assert '"stream": "backfill' not in shown.stdout
    assert str(poller.state_path) in shown.stdout

    expected = in_range - bad
    records = consume(
        poller.bootstrap, poller.topics.completed, expect=len(live_events) + len(expected)
    )
    backfilled = [r for r in records if _in_range(r.value["session"]["startTime"])]
    outside = [r for r in records if not _in_range(r.value["session"]["startTime"])]
    assert sorted(_keys(outside)) == sorted(_keys(live_events)), "the backfill left its range"
    counts = Counter(_keys(backfilled))
    missing, extra = sorted(expected - set(counts)), sorted(set(counts) - expected)
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
    duplicated = {i for i, n in counts.items() if n > 1}
    # Only the kill re-sends: at most the two pages in flight of each window being fetched.
    assert len(duplicated) <= 2 * CONCURRENCY * PAGE_SIZE, sorted(duplicated)[:10]
    assert max(counts.values()) <= 2
    ce_ids: dict[int, set[str]] = defaultdict(set)
    for record in backfilled:
        ce_ids[int(str(record.key))].add(record.headers["ce_id"])
    # The ids the live daemon gives: consumers dedup the backfill against it.
    assert all(ids == {event_id(PARTNER_ID, i, "completed")} for i, ids in ce_ids.items())
    for record in backfilled:
        completed_schema.validate(record.value)
        assert record.value == expected_value(upstream[int(str(record.key))])

    dead = consume(poller.bootstrap, poller.topics.dlq, expect=len(bad))
    assert set(_keys(dead)) == bad and len(dead) <= 2 * len(bad)
    assert all(r.headers["dlq_operation"] == LISTING for r in dead)
    # No started events from the backfill (the live daemon's are for its own sessions).
    started = consume(poller.bootstrap, poller.topics.started, idle=0.5)
    assert not any(_in_range(r.value["session"]["startTime"]) for r in started)


def _keys(records: list[Consumed]) -> list[int]:
    return [int(str(r.key)) for r in records]


def test_arguments_and_credentials_are_checked_before_anything_is_sent(
    emulator: Emulator, poller: PollerRun, tmp_path: Path
) -> None:
    emulator.admin("POST", "/admin/clock", {"set": CLOCK})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "poller", "backfill", "--config", str(poller.config_file()), *args],
            capture_output=True,
            text=True,
            env=poller.environment(),
            timeout=60,
            check=False,
        )

    reversed_range = run("--since", UNTIL, "--until", SINCE)
    assert reversed_range.returncode == 2
    assert "--until: must be after --since" in reversed_range.stderr
    unknown = run("--since", SINCE, "--until", UNTIL, "--partner", "999")
    assert unknown.returncode == 2 and "partner 999 is not configured" in unknown.stderr
    live_file = run("--since", SINCE, "--until", UNTIL, "--state", str(poller.state_path))
    assert live_file.returncode == 2 and "the daemon's state file" in live_file.stderr
    not_a_date = run("--since", "last tuesday", "--until", UNTIL)
    assert not_a_date.returncode == 2 and "not an ISO date" in not_a_date.stderr
    future = run("--since", SINCE, "--until", "2026-02-01", "--dry-run")
    assert future.returncode == 2 and "after the service's current time" in future.stderr

    poller.api_key = "WRONG-key-8c2d1f"
    rejected = run("--since", SINCE, "--until", UNTIL, "--state", str(tmp_path / "bf.sqlite3"))
    assert rejected.returncode == 3
    output = rejected.stdout + rejected.stderr
    errors = [line for line in output.splitlines() if '"level":"error"' in line]
    assert len(errors) == 1, output
    assert f"partner {PARTNER_ID}" in errors[0] and "rejected the credentials" in errors[0]
    assert "WRONG-key-8c2d1f" not in output and "Traceback" not in output
    assert consume(poller.bootstrap, poller.topics.completed, idle=0.5) == []


def test_a_backfill_whose_state_cannot_be_written_stops_saying_so_and_resumes(
    emulator: Emulator, poller: PollerRun
) -> None:
    """A full disk under the backfill's state file (here a file-size limit on the process, so
    that its commits fail after a few pages): it stops with one line naming the file, keeps
    what was acknowledged and committed, and the same command resumes once there is room."""
    emulator.admin("POST", "/admin/clock", {"set": CLOCK})
    emulator.admin(
        "POST",
        "/admin/traffic",
        {"partnerId": PARTNER_ID, "count": 1500, "from": SINCE, "until": UNTIL,
         "maxDuration": 600, "seed": 23},
    )  # fmt: skip
    in_range = {
        str(s["id"]) for s in emulator.sessions("ended") if _in_range(s["record"]["startTime"])
    }
    poller.settings["glance"] = {"page_size": PAGE_SIZE}

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))

    full = subprocess.run(
        backfill_command(poller),
        capture_output=True,
        text=True,
        env=poller.environment(),
        timeout=120,
        check=False,
        preexec_fn=small_files,
    )
    output = full.stdout + full.stderr
    assert full.returncode == 1, output
    stops = log_events(
        full.stdout,
        f"backfill stopped: the state file cannot be written; what was acknowledged is kept, "
        f"{RESUME_HINT}",
    )
    assert len(stops) == 1, output
    assert "Traceback" not in output
    assert f"state file {poller.workdir / 'state.backfill.sqlite3'}" in stops[0]["error"]
    partial = consume(poller.bootstrap, poller.topics.completed, idle=0.5)
    assert 0 < len({r.key for r in partial}) < len(in_range), "the limit did not bite mid-way"

    resumed = backfill(poller)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = consume(poller.bootstrap, poller.topics.completed, expect=len(in_range))
    assert {r.key for r in records} == in_range
    assert_one_ce_id_each(records)
