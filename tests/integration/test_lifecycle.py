"""Every session, once: late completions, started events, counts, several partners."""

from __future__ import annotations

import signal
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.integration.harness import (
    PARTNER_ID,
    Consumed,
    Emulator,
    PollerRun,
    consume,
    kill,
    log_events,
    wait_until,
)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def by_id(records: list[Consumed]) -> dict[int, list[Consumed]]:
    grouped: dict[int, list[Consumed]] = defaultdict(list)
    for record in records:
        grouped[int(record.key or 0)].append(record)
    return grouped


def long_sessions(emulator: Emulator, count: int) -> list[dict[str, Any]]:
    """``count`` sessions starting over the next two hours, lasting up to 20 hours."""
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": count,
            "from": iso(T0),
            "until": iso(T0 + timedelta(hours=2)),
            "minDuration": 30,
            "maxDuration": 20 * 3600,
            "seed": 3,
        },
    )
    sessions = emulator.sessions("all")
    assert len(sessions) == count
    return sessions


def assert_every_session_once(
    poller: PollerRun, sessions: list[dict[str, Any]], schemas: tuple[Any, Any]
) -> None:
    ids = {s["id"] for s in sessions}
    completed = by_id(consume(poller.bootstrap, poller.topics.completed, expect=len(ids)))
    started = by_id(consume(poller.bootstrap, poller.topics.started, expect=len(ids)))
    for stream, schema in zip((completed, started), schemas, strict=True):
        for copies in stream.values():
            schema.validate(copies[0].value)
    observed = Counter(copies[0].value["observedActive"] for copies in started.values())
    assert observed[True] > 0 and observed[False] > 0, observed
    assert set(completed) == ids, f"missing completions: {sorted(ids - set(completed))[:10]}"
    assert set(started) == ids, f"missing starts: {sorted(ids - set(started))[:10]}"
    for stream in (completed, started):
        for copies in stream.values():
            assert len({c.headers["ce_id"] for c in copies}) == 1
            assert len({orjson_key(c.value) for c in copies}) == 1
    for session_id, copies in completed.items():
        assert min(c.timestamp for c in started[session_id]) <= min(c.timestamp for c in copies)
    assert {s["endTime"] for s in sessions} >= {
        c[0].value["session"]["endTime"] for c in completed.values()
    }


def orjson_key(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def test_long_sessions_ending_out_of_order_each_arrive_once(
    emulator: Emulator, poller: PollerRun, completed_schema: Any, started_schema: Any
) -> None:
    sessions = long_sessions(emulator, 2000)
    ends = sorted(datetime.fromisoformat(s["endTime"].replace("Z", "+00:00")) for s in sessions)
    assert ends[-1] - ends[0] > timedelta(hours=15), "the traffic should end over many hours"
    poller.settings["completed"] = {"start_lookback": "10m"}
    poller.settings["glance"] = {"page_size": 200}
    # The feed begins before the traffic (a first start reads nothing before its lookback).
    first = poller.once()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    output = [first.stdout]
    hours = int((ends[-1] - T0).total_seconds() // 3600) + 2
    for _ in range(hours):
        emulator.advance(3600)
        result = poller.once()
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        output.append(result.stdout)
    for _ in range(2):  # a few more sweeps once everything has ended
        result = poller.once()
        output.append(result.stdout)

    assert_every_session_once(poller, sessions, (completed_schema, started_schema))
    completed = consume(poller.bootstrap, poller.topics.completed, expect=2000)
    assert len(completed) == 2000, "no duplicates without crashes"
    sweeps = log_events("\n".join(output), "tick", stream="reconcile")
    # Each --once run is a new process, with no open listing before its own: every long
    # session here is the sweep's (the daemon fetches them as they leave the listing).
    assert sum(s["late_completions"] for s in sweeps) > 250
    for sweep in sweeps:
        # One call over the whole horizon, one per bucket only when it is short, one for
        # sessions leaving the horizon: never more.
        assert sweep["counts_calls"] <= sweep["buckets"] + 2, sweep
        assert sweep["rescanned"] <= sweep["buckets"]
        assert sweep["still_mismatched"] == 0


def test_restarts_with_sigterm_and_sigkill_change_nothing(
    emulator: Emulator, poller: PollerRun, completed_schema: Any, started_schema: Any
) -> None:
    sessions = long_sessions(emulator, 600)
    poller.settings["completed"] = {"start_lookback": "10m", "interval": "200ms"}
    poller.settings["reconcile"] = {"interval": "200ms"}
    poller.settings["started"] = {"interval": "200ms"}
    poller.settings["glance"] = {"page_size": 50}
    # Progress is read from every tick's line: those that read nothing are logged at debug.
    poller.settings["log"] = {"level": "debug", "format": "json"}
    daemon = poller.start()
    # The feed begins before the traffic: its first scan, before the clock moves.
    wait_until(
        lambda: bool(log_events(poller.log_text(), "tick", stream="completed")),
        timeout=60,
        what="the first scan",
    )
    kills = 0
    try:
        for hour in range(1, 24):
            emulator.advance(3600)
            now = iso(T0 + timedelta(hours=hour))
            seen = len(poller.log_text())
            wait_until(
                lambda seen=seen, now=now: _swept_after(poller.log_text()[seen:], now),
                timeout=60,
                what=f"a reconcile sweep after {now}",
            )
            if hour % 4 == 0:
                kills += 1
                code = kill(daemon, signal.SIGKILL if hour % 8 == 0 else signal.SIGTERM)
                assert code in (0, -signal.SIGKILL)
                daemon = poller.start()
        seen = len(poller.log_text())
        wait_until(
            lambda: _swept_after(poller.log_text()[seen:], iso(T0 + timedelta(hours=23))),
            60,
            "a last sweep",
        )
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
    assert kills == 5
    assert_every_session_once(poller, sessions, (completed_schema, started_schema))


def _swept_after(log: str, now: str) -> bool:
    completed = [
        t
        for t in log_events(log, "tick", stream="completed")
        if (t["scanned_until"] or "") >= now.replace("Z", "+00:00")
    ]
    return bool(completed) and bool(
        log_events(log.split(completed[0]["timestamp"], 1)[-1], "tick", stream="reconcile")
    )


def test_counts_agree_with_the_emulators_tally(
    emulator: Emulator, poller: PollerRun, counts_schema: Any
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 800,
            "from": "2026-03-10T00:00:00Z",
            "until": "2026-03-10T11:59:00Z",
            "minDuration": 10,
            "maxDuration": 6 * 3600,
            "seed": 9,
        },
    )
    # Sessions of yesterday must not count.
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 50,
            "from": "2026-03-09T20:00:00Z",
            "until": "2026-03-09T23:00:00Z",
            "seed": 10,
        },
    )
    result = poller.once()
    assert result.returncode == 0, result.stdout[-2000:]
    (event,) = consume(poller.bootstrap, poller.topics.counts, expect=1)
    assert event.key == str(PARTNER_ID)
    assert event.headers["ce_type"] == "net.glance.session.counts"
    value = event.value
    counts_schema.validate(value)
    assert (value["day"], value["asOf"]) == ("2026-03-10", "2026-03-10T12:00:00Z")

    tally: dict[str, Counter[tuple[str, str]]] = {"active": Counter(), "completed": Counter()}
    for s in emulator.sessions("all"):
        if s["startTime"].startswith("2026-03-10") and s["status"] is not None:
            tally["completed" if s["ended"] else "active"][(s["type"], s["status"])] += 1
    for kind in ("active", "completed"):
        got = {(r["type"], r["status"]): r["count"] for r in value[kind]}
        assert got == dict(tally[kind]), kind
        assert value["totals"][kind] == sum(tally[kind].values())
    assert value["totals"]["active"] > 0 and value["totals"]["completed"] > 0


def test_two_partners_do_not_mix_and_a_wrong_key_delays_no_one(
    emulator: Emulator, poller: PollerRun
) -> None:
    other, broken = 777, 888
    emulator.admin("POST", "/admin/partners", {"partnerId": other, "apiKey": "key-777"})
    emulator.admin("POST", "/admin/partners", {"partnerId": broken, "apiKey": "key-888"})
    for partner, count in ((PARTNER_ID, 300), (other, 120), (broken, 10)):
        emulator.admin(
            "POST",
            "/admin/traffic",
            {
                "partnerId": partner,
                "count": count,
                "from": "2026-03-10T10:00:00Z",
                "until": "2026-03-10T11:00:00Z",
                "maxDuration": 900,
            },
        )
    poller.other_partners = {other: "key-777", broken: "not-the-key"}
    result = poller.once()
    assert result.returncode == 1, "one partner failed, so --once reports failure"
    errors = log_events(
        result.stdout,
        "partner 888: the Glance Activity Service rejected the credentials "
        "(Invalid partnerId or apiKey); check the partner id and its API key",
    )
    assert len(errors) == 1
    assert "not-the-key" not in result.stdout + result.stderr

    records = consume(poller.bootstrap, poller.topics.completed, expect=420)
    partners = Counter(r.value["partnerId"] for r in records)
    assert partners == {PARTNER_ID: 300, other: 120}
    for partner in (PARTNER_ID, other):
        mine = {int(r.key) for r in records if r.value["partnerId"] == partner}
        assert mine == {s["id"] for s in emulator.sessions("ended", partner_id=partner)}
        assert all(
            r.headers["ce_source"] == f"/glance/partners/{r.value['partnerId']}" for r in records
        )


def test_without_an_open_sessions_operation_the_started_stream_turns_off(
    emulator: Emulator, poller: PollerRun
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 40,
            "from": "2026-03-10T11:00:00Z",
            "until": "2026-03-10T11:30:00Z",
            "maxDuration": 600,
        },
    )
    poller.settings["started"] = {"operation": "PartnerOpenSessionsThatDoNotExist"}
    result = poller.once()
    assert result.returncode == 0, result.stdout[-2000:]
    warnings = [line for line in result.stdout.splitlines() if "the started stream is off" in line]
    assert len(warnings) == 1
    assert len(consume(poller.bootstrap, poller.topics.completed, expect=40)) == 40
    assert consume(poller.bootstrap, poller.topics.started, idle=1.0) == []


def test_a_session_longer_than_the_horizon_is_reported(
    emulator: Emulator, poller: PollerRun
) -> None:
    emulator.admin(
        "POST",
        "/admin/sessions",
        {
            "partnerId": PARTNER_ID,
            "sessions": [{"startTime": "2026-03-10T12:10:00Z", "endTime": "2026-03-10T18:00:00Z"}],
        },
    )
    poller.settings["reconcile"] = {"horizon": "2h", "bucket": "1h"}
    poller.settings["completed"] = {"start_lookback": "10m"}
    # The feed begins before the session starts (nothing before the first start's lookback).
    logs = [poller.once().stdout]
    for _ in range(5):
        emulator.advance(3600)
        result = poller.once()
        assert result.returncode == 0
        logs.append(result.stdout)
    reported = log_events(
        "\n".join(logs),
        "sessions still open past the horizon: their completion will not be delivered "
        "(raise reconcile.horizon to cover longer sessions)",
    )
    assert [r["sessions"] for r in reported] == [1]
    assert reported[0]["started_from"] <= "2026-03-10T12:10:00+00:00" < reported[0]["started_until"]
    sweeps = log_events("\n".join(logs), "tick", stream="reconcile")
    assert sum(s["beyond_horizon"] for s in sweeps) == 1
