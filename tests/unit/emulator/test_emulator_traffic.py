from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from poller.emulator.sessions import TERMINAL_STATUSES, Session
from poller.emulator.traffic import LiveTraffic, TrafficProfile, generate_bulk

START = 1_710_504_000  # 2024-03-15T12:00:00Z
DAY = 86_400


def counter(first: int = 1) -> Callable[[], int]:
    ids = itertools.count(first)
    return lambda: next(ids)


def bulk(count: int, seed: int | str = 1, profile: TrafficProfile | None = None) -> list[Session]:
    return generate_bulk(
        1,
        count,
        START - DAY,
        START,
        seed=seed,
        profile=profile or TrafficProfile(),
        allocate_id=counter(),
    )


def fingerprint(sessions: list[Session]) -> bytes:
    return orjson.dumps(
        [(s.user_name, s.partner_user_id, s.start, s.end, s.record) for s in sessions]
    )


def test_same_seed_same_sessions_other_seed_other_sessions() -> None:
    assert fingerprint(bulk(300, seed=5)) == fingerprint(bulk(300, seed=5))
    assert fingerprint(bulk(300, seed=5)) != fingerprint(bulk(300, seed=6))


def test_ids_ascend_with_start_times_inside_the_range() -> None:
    sessions = bulk(500)
    assert [s.id for s in sessions] == list(range(1, 501))
    starts = [s.start for s in sessions]
    assert starts == sorted(starts)
    assert starts[0] >= START - DAY and starts[-1] < START


def test_the_mix_is_realistic() -> None:
    sessions = bulk(3000)
    types = Counter(s.type for s in sessions)
    statuses = Counter(s.final_status for s in sessions)
    assert set(types) == {"C", "G", "V"}
    assert types["C"] > types["G"] > types["V"]
    assert set(statuses) == set(TERMINAL_STATUSES)
    assert statuses["C"] > sum(statuses.values()) / 2
    assert statuses["X"] > statuses["K"]
    assert {len(s.guests) for s in sessions} == {1, 2, 3, 4}
    durations = [s.end - s.start for s in sessions if s.end is not None]
    assert sum(10 <= d <= 180 for d in durations) > len(durations) / 4  # short ones flow fast
    assert sum(d > 2 * 3600 for d in durations) > 10  # many hours, sometimes
    assert max(durations) <= TrafficProfile().max_duration
    for session in sessions:
        record = session.record
        if session.type == "C":
            assert (record["width"], record["height"]) == (0, 0)
            assert {g["type"] for g in record["guests"]} <= {"visitor", "agent", ""}
        else:
            assert record["width"] > 0 and record["height"] > 0
        if session.type == "G":
            assert {g["type"] for g in record["guests"]} <= {"host", "guest", ""}
        assert isinstance(record["key"], str)
    guests = [g for s in sessions for g in s.record["guests"]]
    assert any(g["name"] for g in guests) and any(g["name"] is None for g in guests)
    assert any("error" in g for g in guests)
    assert any("clientVersion" in g for g in guests)
    assert any(g["location"]["city"] is None for g in guests)
    assert len({s.user_name for s in sessions}) == TrafficProfile().users
    assert any(s.record["key"].startswith("9900V") for s in sessions)


def test_durations_respect_the_profile() -> None:
    profile = TrafficProfile(min_duration=60, max_duration=300)
    durations = {s.end - s.start for s in bulk(500, profile=profile) if s.end is not None}
    assert min(durations) >= 60 and max(durations) <= 300


def live_sessions(ticks: list[float], rate: float = 30.0) -> list[Session]:
    traffic = LiveTraffic(1, rate, START - 3600, seed="s", profile=TrafficProfile())
    allocate = counter()
    made: list[Session] = []
    for now in ticks:
        made.extend(traffic.due(now, allocate))
    return made


def test_live_traffic_depends_on_the_clock_not_on_when_it_is_asked() -> None:
    one_look = live_sessions([START + 600])
    many_looks = live_sessions([START - 1800, START, START + 1.5, START + 300, START + 600])
    assert fingerprint(one_look) == fingerprint(many_looks)
    assert [s.id for s in one_look] == list(range(1, len(one_look) + 1))
    # About 30 a minute over the 70 minutes since the origin.
    assert 1500 < len(one_look) < 2700
    assert all(s.start <= START + 600 for s in one_look)


def test_live_backlog_has_completed_sessions_and_some_still_running() -> None:
    sessions = live_sessions([START])
    ended = [s for s in sessions if s.has_ended(START)]
    running = [s for s in sessions if not s.has_ended(START)]
    assert len(ended) > len(sessions) / 2
    assert running
    # Within a minute of "now", something ends: a demo sees events within seconds.
    assert any(START < (s.end or 0) <= START + 60 for s in running)


def test_live_traffic_survives_a_huge_clock_jump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LiveTraffic, "MAX_CATCH_UP", 1000)
    traffic = LiveTraffic(1, 600.0, START, seed=1, profile=TrafficProfile())
    made = traffic.due(START + 365 * DAY, counter())
    assert 900 < len(made) < 1100
    assert all(s.start > START + 364 * DAY for s in made)
