"""Upstream's answers are data, never instructions: redirects, sizes, dates and page tokens
from a hostile service over real HTTP, with the daemon against the real broker."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from poller.state import StateStore
from poller.streams.open_sessions import DEPARTED_TRIES
from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    PollerRun,
    Topics,
    consume,
    kill,
    log_events,
    wait_until,
)
from tests.integration.hostile import (
    HostileServer,
    counts_or,
    json_answer,
    listing,
    session,
)

LISTING = "PartnerCompletedSessions"


def daemon(tmp_path: Path, url: str, bootstrap: str, **glance: Any) -> PollerRun:
    run = PollerRun(tmp_path, url, bootstrap, Topics.unique())
    run.settings = {
        "glance": {"clock_tolerance": "5m", **glance},
        "started": {"enabled": False},
        "reconcile": {"enabled": False},
        "counts": {"enabled": False},
        "retry": {"max_attempts": 2, "initial_delay": "10ms", "max_delay": "20ms"},
        "completed": {"start_lookback": "1h", "overlap": "0s"},
    }
    return run


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_never_followed_and_names_the_location(
    tmp_path: Path, kafka_bootstrap: str, status: int
) -> None:
    elsewhere = HostileServer(lambda operation, params: json_answer(listing([])))
    with elsewhere.running():
        target = f"{elsewhere.url}/steal/PartnerSessionCounts"

        def redirect(operation: str, params: dict[str, Any]) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": target})

        with HostileServer(redirect).running() as upstream:
            result = daemon(tmp_path, upstream.url, kafka_bootstrap).once()
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert target in output and "glance.base_url" in output
    assert elsewhere.requests == [], "the API key went to another host"
    assert "it-api-key" not in output


def test_an_answer_beyond_the_cap_is_a_bad_answer_and_memory_stays_bounded(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    huge = b'{"d": {"nextId": 0, "users": [], "padding": "' + b"x" * (300 << 20) + b'"}}'

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        return web.Response(body=huge, content_type="application/json")

    with HostileServer(counts_or(answer)).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        # The daemon's own peak, read by its process as it exits (VmHWM: getrusage's peak
        # would carry this test process's, which holds the answer, across the exec).
        measured = (
            "import runpy, sys\n"
            "sys.argv = ['glance-poller', 'run', '--once', '--config', sys.argv[1]]\n"
            "try:\n    runpy.run_module('poller', run_name='__main__')\n"
            "finally:\n"
            "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "    print('peak_kib', hwm.split()[1], file=sys.stderr)\n"
        )
        result = subprocess.run(
            [PYTHON, "-c", measured, str(run.config_file())],
            capture_output=True,
            text=True,
            env=run.environment(),
            timeout=120,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = log_events(result.stdout, "tick failed; will retry next tick")
    assert failed["error"].startswith("too_large")
    peak_mib = int(result.stderr.split("peak_kib")[-1].split()[0]) / 1024
    assert peak_mib < 150, f"the daemon peaked at {peak_mib:.0f} MiB"


def test_more_records_than_asked_for_is_a_bad_answer(tmp_path: Path, kafka_bootstrap: str) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)
    many = [session(i, start) for i in range(1, 200)]

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        return json_answer(listing(many))

    with HostileServer(counts_or(answer)).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap, page_size=50)
        result = run.once()
    assert result.returncode == 1
    (failed,) = log_events(result.stdout, "tick failed; will retry next tick")
    assert "more records than the 50 asked for" in failed["error"]
    assert consume(kafka_bootstrap, run.topics.completed, idle=0.5) == []


@pytest.mark.parametrize("token", [2**64, 2**70, -1, "12", 1.5])
def test_a_page_token_the_state_cannot_hold_is_a_bad_answer_never_a_crash(
    tmp_path: Path, kafka_bootstrap: str, token: Any
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        body = listing([session(1, start)], next_id=token)
        # orjson cannot write integers past 64 bits; a hostile upstream can.
        import json

        return web.Response(body=json.dumps(body), content_type="application/json")

    with HostileServer(counts_or(answer)).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        result = run.once()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (failed,) = log_events(result.stdout, "tick failed; will retry next tick")
    assert failed["error"].startswith("bad_shape: nextId is not an integer")
    store = StateStore.open(run.state_path)
    try:
        assert store.cursor(PARTNER_ID, "completed") is None, "nothing is committed"
    finally:
        store.close()


def test_a_date_from_the_future_is_bounded_by_the_host_clock(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=30)

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        future = datetime(2099, 1, 1, tzinfo=UTC)
        if operation.startswith("PartnerSessionCounts"):
            return json_answer({"d": []}, date=future)
        return json_answer(listing([session(7, start)]), date=future)

    with HostileServer(answer).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        result = run.once()
        assert result.returncode == 0, result.stdout + result.stderr
        warnings = log_events(
            result.stdout,
            "upstream's Date is too far from the host clock; "
            "the host clock bounds it (check the host's and the service's "
            "time, or glance.clock_tolerance)",
        )
        assert len(warnings) == 1, "said once"
        (record,) = consume(kafka_bootstrap, run.topics.completed, expect=1)
        assert record.key == "7"
        store = StateStore.open(run.state_path)
        try:
            cursor = store.cursor(PARTNER_ID, "completed")
        finally:
            store.close()
        assert cursor is not None
        assert cursor.scanned_until <= datetime.now(UTC) + timedelta(minutes=5)


def test_a_stored_cursor_in_the_future_is_reported_loudly(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    from poller.cursor import Cursor

    run = daemon(tmp_path, "http://127.0.0.1:9", kafka_bootstrap)
    store = StateStore.open(run.state_path)
    store.commit(PARTNER_ID, cursors={"completed": Cursor(datetime(2099, 1, 1, tzinfo=UTC))})
    store.close()
    result = run.once()
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "cursor lies in the future" in output
    assert f"state reset --partner {PARTNER_ID} --to" in output


@pytest.mark.parametrize("cut_at", [3, 9, 14])
def test_a_fault_echoing_the_key_across_the_cut_leaks_no_part_of_it(
    tmp_path: Path, kafka_bootstrap: str, cut_at: int
) -> None:
    # ASP.NET's "Invalid JSON primitive" faults echo the request. The daemon keeps 200
    # characters of a fault's message: cut there before redacting, the key's start was left
    # whole enough to be read, and no longer matched the key to be redacted.
    def fault(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        echoed = f'{{"apiKey":"{params.get("apiKey")}"}}'
        message = "x" * (200 - len('{"apiKey":"') - cut_at) + echoed
        body = {"Message": message, "ExceptionType": "System.ArgumentException"}
        return json_answer(body, status=500)

    with HostileServer(fault).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        result = run.once()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert log_events(result.stdout, "tick failed; will retry next tick"), output
    for start in range(len(run.api_key) - 5):
        assert run.api_key[start : start + 6] not in output, output[-2000:]


def run_for_two_ticks(run: PollerRun, stream: str) -> None:
    """The daemon until ``stream`` has logged two ticks, then a clean stop."""
    process = run.start()
    try:
        wait_until(
            lambda: len(log_events(run.log_text(), "tick", stream=stream)) >= 2,
            60,
            f"two {stream} ticks",
        )
    finally:
        assert kill(process, signal.SIGTERM) == 0


def test_a_next_id_that_never_ends_holds_a_sweep_no_longer_than_the_bucket_count_allows(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Found by an adversary: a bucket's rescan followed ``nextId`` for as long as upstream
    gave one, holding the partner's state (its fast scan waited) for as long as it went on. A
    bucket upstream counts 3 sessions in takes a page or two, and a margin, not for ever."""

    def is_bucket(params: dict[str, Any]) -> bool:
        start = datetime.fromisoformat(params["startRange"])
        return start.minute == 0 and start.second == 0

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        if operation.startswith("PartnerSessionCounts"):
            return json_answer({"d": [{"type": "C", "status": "C", "count": 3}]})
        if is_bucket(params):
            return json_answer(listing([], next_id=int(params.get("nextId") or 0) + 1))
        return json_answer(listing([]))

    with HostileServer(answer).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        run.settings["completed"]["interval"] = "500ms"
        run.settings["completed"]["start_lookback"] = "90m"
        run.settings["reconcile"] = {"interval": "1s"}
        run_for_two_ticks(run, "reconcile")
        rescans = [params for _, params in upstream.requests if "startRange" in params]
    log = run.log_text()
    warnings = log_events(
        log,
        "upstream listed more pages than its count allows; "
        "the bucket is read again at the next sweep",
    )
    assert warnings and warnings[0]["pages"] == 3, log[-3000:]
    per_bucket = Counter(p["startRange"] for p in rescans if is_bucket(p) and p.get("nextId"))
    sweeps = len(log_events(log, "tick", stream="reconcile")) + 1
    assert max(per_bucket.values()) <= 3 * sweeps, per_bucket


def test_a_next_id_that_never_ends_in_the_open_sessions_holds_a_tick_no_longer_than_its_budget(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The open sessions' listing, too, followed ``nextId`` for as long as upstream gave one,
    and the partner's fast scan waited behind it."""

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        if operation == "PartnerActiveSessions" and int(params.get("nResults") or 0) > 1:
            return json_answer(listing([], next_id=int(params.get("nextId") or 0) + 1))
        return json_answer(
            {"d": []} if operation.startswith("PartnerSessionCounts") else listing([])
        )

    with HostileServer(answer).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        run.settings["completed"]["interval"] = "500ms"
        run.settings["started"] = {"interval": "500ms", "max_pages_per_tick": 20}
        # Every tick's line: the fast scan's read nothing, and are logged at debug.
        run.settings["log"] = {"level": "debug", "format": "json"}
        run_for_two_ticks(run, "started")
    log = run.log_text()
    cut = log_events(
        log,
        "the open sessions' listing reached started.max_pages_per_tick; "
        "it is read again at the next tick",
    )
    assert cut and cut[0]["pages"] == 20, log[-3000:]
    after = log.split(cut[0]["timestamp"], 1)[-1]
    assert log_events(after, "tick", stream="completed"), "the fast scan went on"


def test_a_next_id_that_never_ends_for_a_session_just_ended_holds_a_tick_no_longer_than_its_budget(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A session the open listing showed, then no longer does, is fetched at its start at once
    (before the fast scan's window): that fetch too follows ``nextId`` only as far as the
    tick's page budget, says so, and the fast scan goes on."""
    started_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=80)
    start_text = started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    open_listings = Counter[str]()

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        if operation.startswith("PartnerSessionCounts"):
            return json_answer({"d": []})
        if operation == "PartnerActiveSessions":
            open_listings["all"] += 1
            listed = open_listings["all"] <= 3  # then it ends
            return json_answer(listing([session(77, started_at)] if listed else []))
        if params.get("startRange", "").startswith(start_text[:19]):
            return json_answer(listing([], next_id=int(params.get("nextId") or 0) + 1))
        return json_answer(listing([]))

    with HostileServer(answer).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        run.settings["completed"].update(interval="500ms", max_pages_per_tick=12)
        run.settings["started"] = {"interval": "500ms"}
        run.settings["log"] = {"level": "debug", "format": "json"}
        cut_short = (
            "a just-ended session's listing reached completed.max_pages_per_tick; it is read "
            "again at the next tick, then left to the reconcile sweep"
        )

        def completed_ticks() -> int:
            return len(log_events(run.log_text(), "tick", stream="completed"))

        process = run.start()
        try:
            wait_until(
                lambda: len(log_events(run.log_text(), cut_short)) >= DEPARTED_TRIES,
                60,
                "every try of the ended session's fetch",
            )
            ticks = completed_ticks()
            wait_until(lambda: completed_ticks() >= ticks + 3, 60, "more ticks of the fast scan")
        finally:
            assert kill(process, signal.SIGTERM) == 0
        fetches = [p for _, p in upstream.requests if p.get("startRange", "") == start_text]
    log = run.log_text()
    cut = log_events(log, cut_short)
    assert len(cut) == DEPARTED_TRIES and all(c["pages"] == 12 for c in cut), log[-3000:]
    # The client asks for the next page while one is handled: one more request per listing.
    assert len(fetches) <= 13 * len(cut), f"{len(fetches)} pages in {len(cut)} cut fetches"


def test_a_record_with_a_lone_surrogate_escape_is_published_and_its_page_with_it(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Found by an adversary: one string holding ``\\ud800`` alone (valid JSON; a .NET string
    cut inside an emoji) failed its whole page at every tick, for ever. The page goes through;
    the lone half reads as U+FFFD."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    body = orjson.dumps(listing([session(9100, start), session(9101, start)]))
    body = body.replace(b'"key":"9101"', b'"key":"cut \\ud83d"')

    def answer(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    with HostileServer(counts_or(answer)).running() as upstream:
        run = daemon(tmp_path, upstream.url, kafka_bootstrap)
        result = run.once()
    assert result.returncode == 0, result.stdout + result.stderr
    records = consume(kafka_bootstrap, run.topics.completed, expect=2)
    keys = {r.key: r.value["session"]["key"] for r in records}
    assert keys == {"9100": "9100", "9101": "cut \ufffd"}
    assert consume(kafka_bootstrap, run.topics.dlq, idle=0.5) == []
