"""Polite live polling: the fast scan re-reads only where a session can still appear, and
not at all when nothing completed there; every session still arrives, once, a tick after it
ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from poller.errors import RetriableUpstreamError
from poller.events import EventBuilder, PiiPolicy
from poller.glance.records import SessionPage
from poller.settings import (
    CompletedStreamSettings,
    GlanceSettings,
    ReconcileSettings,
    TopicSettings,
)
from poller.state import StateStore
from poller.streams.completed import CompletedStream
from poller.streams.feed import PartnerFeed
from poller.streams.reconcile import ReconcileSweep
from poller.streams.scan import Scanner
from poller.window import Window
from tests.unit.fakes import T0, MemoryPublisher, MemoryUpstream, Session

S = timedelta(seconds=1)
M = timedelta(minutes=1)
COMPLETED = "PartnerCompletedSessions"
OPEN = "PartnerActiveSessions"
TOPIC = TopicSettings().completed


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(tmp_path / "state.sqlite3")
    yield store
    store.close()


class FlakyCounts(MemoryUpstream):
    """Counts calls fail while ``failing`` is set."""

    failing = False

    async def session_counts(
        self, window: Window, *, status: str, kind: str = "", shape: Any = None
    ) -> Any:
        if self.failing:
            raise RetriableUpstreamError("fault", "counts are down")
        return await super().session_counts(window, status=status, kind=kind, shape=shape)


class Live:
    """A partner's fast scan (overlap 5 min) and sweep, without the started stream."""

    def __init__(self, upstream: MemoryUpstream, state: StateStore, **completed: Any) -> None:
        self.upstream = upstream
        self.publisher = MemoryPublisher()
        builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
        feed = PartnerFeed(1, builder, self.publisher, state, started_enabled=False)
        scanner = Scanner(upstream, feed, upstream.page_size, asyncio.Event())  # type: ignore[arg-type]
        settings = CompletedStreamSettings(**{"overlap": 300, "start_lookback": 600, **completed})
        glance = GlanceSettings(base_url="http://upstream.invalid")
        self.completed = CompletedStream(scanner, glance, settings, open_operation=OPEN)
        self.sweep = ReconcileSweep(scanner, glance, settings, ReconcileSettings())

    def delivered(self) -> list[int]:
        return sorted(set(self.publisher.session_ids(TOPIC)))

    def ids_sent(self) -> list[int]:
        return self.publisher.session_ids(TOPIC)

    async def tick_at(self, moment: datetime) -> list[Window]:
        """One tick at upstream time ``moment``: the windows of the completed listings."""
        self.upstream.now = moment
        self.upstream.calls.clear()
        await self.completed.tick()
        return [w for op, w, _ in self.upstream.calls if op == COMPLETED]

    def read_before(self, windows: list[Window], moment: datetime) -> bool:
        return any(w.start < moment for w in windows)


def ended(session_id: int, start: datetime, seconds: int) -> Session:
    return Session(session_id, start, seconds)


async def test_nothing_open_and_nothing_new_re_reads_nothing(state: StateStore) -> None:
    sessions = [ended(i, T0 - 4 * M + i * S, 5) for i in range(1, 30)]
    live = Live(MemoryUpstream(sessions, T0), state)
    await live.tick_at(T0)
    assert live.delivered() == list(range(1, 30))
    windows = await live.tick_at(T0 + 5 * S)
    assert windows and not live.read_before(windows, T0), "settled sessions read again"
    windows = await live.tick_at(T0 + 10 * S)
    assert not live.read_before(windows, T0 + 5 * S)


async def test_the_re_read_starts_at_the_oldest_session_still_open(state: StateStore) -> None:
    short = ended(1, T0 - 4 * M, 10)
    still_open = Session(2, T0 - 90 * S, None)
    live = Live(MemoryUpstream([short, still_open, ended(3, T0 - 30 * S, 5)], T0), state)
    await live.tick_at(T0 - 5 * S)  # the first start: from start_lookback
    await live.tick_at(T0)
    assert live.delivered() == [1, 3]
    still_open.duration = 93  # ends at T0 + 3 s
    windows = await live.tick_at(T0 + 5 * S)
    assert live.delivered() == [1, 2, 3], "delivered the tick after it ended"
    assert min(w.start for w in windows) == still_open.start, "read before the oldest open one"


async def test_a_session_ending_in_the_overlap_arrives_next_tick_and_once(
    state: StateStore,
) -> None:
    # Sessions of 10-20 s starting every second, ticks every 5 s: the steady state.
    sessions = [ended(i, T0 - 2 * M + i * S, 10 + i % 11) for i in range(1, 200)]
    live = Live(MemoryUpstream(sessions, T0 - 2 * M), state)
    moment = T0 - 2 * M
    for _ in range(60):
        moment += 5 * S
        await live.tick_at(moment)
        for session in sessions:
            end = session.start + session.duration * S  # type: ignore[operator]
            if end <= moment:
                assert session.id in live.delivered(), f"{session.id} ended {end}, not sent"
    assert live.delivered() == [s.id for s in sessions]
    assert len(live.ids_sent()) == len(sessions), "a session was sent twice"


async def test_without_the_open_listing_the_whole_overlap_is_checked(state: StateStore) -> None:
    upstream = MemoryUpstream([ended(1, T0 - 4 * M, 10)], T0)
    upstream.operations.discard(OPEN)
    late = Session(2, T0 - 3 * M, None)
    upstream.sessions.append(late)
    live = Live(upstream, state)
    await live.tick_at(T0)
    late.duration = 3 * 60 + 2  # ends at T0 + 2 s
    await live.tick_at(T0 + 5 * S)
    assert live.delivered() == [1, 2]


async def test_a_failed_count_re_reads_rather_than_skips(state: StateStore) -> None:
    upstream = FlakyCounts([], T0)
    live = Live(upstream, state)
    late = Session(2, T0 - 3 * M, None)
    upstream.sessions.append(late)
    await live.tick_at(T0)
    upstream.failing = True
    late.duration = 3 * 60 + 2
    windows = await live.tick_at(T0 + 5 * S)
    assert live.read_before(windows, T0), "nothing known, so the overlap is read"
    assert live.delivered() == [2]


async def test_a_count_matching_what_was_emitted_skips_the_re_read(state: StateStore) -> None:
    still_open = Session(2, T0 - 3 * M, None)
    live = Live(MemoryUpstream([ended(1, T0 - 4 * M, 10), still_open], T0), state)
    await live.tick_at(T0)
    windows = await live.tick_at(T0 + 5 * S)  # still open: nothing new completed
    assert not live.read_before(windows, T0)
    still_open.duration = 3 * 60 + 7
    windows = await live.tick_at(T0 + 10 * S)
    assert live.read_before(windows, T0 + 5 * S)
    assert live.delivered() == [1, 2]


async def test_a_tick_cut_short_leaves_the_next_one_the_whole_overlap(state: StateStore) -> None:
    sessions = [ended(i, T0 - 4 * M + i * S, 5) for i in range(1, 30)]
    late = Session(99, T0 - 4 * M, None)
    live = Live(MemoryUpstream([*sessions, late], T0), state, max_pages_per_tick=2)
    await live.tick_at(T0)  # 2 pages of 3: behind
    late.duration = 4 * 60 + 7
    for step in range(1, 12):
        await live.tick_at(T0 + step * 5 * S)
    assert live.delivered() == sorted([*range(1, 30), 99])


class FlakyOpenListing(MemoryUpstream):
    """The open-sessions listing fails while ``failing`` is set."""

    failing = False

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        if operation == OPEN and self.failing:
            raise RetriableUpstreamError("fault", "the open listing is down")
        async for page in super().session_pages(operation, window, page_size, start_token):
            yield page


async def test_a_failed_question_about_open_sessions_re_reads_the_whole_overlap(
    state: StateStore,
) -> None:
    upstream = FlakyOpenListing([], T0)
    late = Session(2, T0 - 3 * M, None)
    upstream.sessions.append(late)
    live = Live(upstream, state)
    await live.tick_at(T0 - 5 * S)
    upstream.failing = True
    await live.tick_at(T0)
    upstream.failing = False
    late.duration = 3 * 60 + 2  # ends at T0 + 2 s
    await live.tick_at(T0 + 5 * S)
    assert live.delivered() == [2]


async def test_an_open_session_without_a_readable_start_gives_no_bound(state: StateStore) -> None:
    odd = Session(1, T0 - 3 * M, None, extra={"startTime": "not a date"})
    late = Session(2, T0 - 2 * M, None)
    live = Live(MemoryUpstream([odd, late], T0), state)
    await live.tick_at(T0 - 5 * S)
    await live.tick_at(T0)
    late.duration = 2 * 60 + 2
    await live.tick_at(T0 + 5 * S)
    assert 2 in live.delivered()


async def test_an_idle_partner_costs_one_call_a_tick_and_misses_nothing(state: StateStore) -> None:
    # Nothing emitted where the next tick re-reads: re-reading all of it repeats nothing, so
    # neither question is worth its call; one listing covers the overlap and the new part.
    upstream = MemoryUpstream([], T0)
    live = Live(upstream, state)
    await live.tick_at(T0)
    for step in range(1, 4):
        moment = T0 + step * 5 * S
        await live.tick_at(moment)
        calls = [(op, w) for op, w, _ in upstream.calls]
        assert calls == [(COMPLETED, Window(moment - 5 * S - 5 * M, moment))], calls
    # A session open at the last tick and one that started and ended since: both arrive.
    moment = T0 + 15 * S
    upstream.sessions += [Session(1, moment - 30 * S, 33), ended(2, moment + S, 2)]
    await live.tick_at(moment + 5 * S)
    assert live.delivered() == [1, 2]
    # Then a re-read would repeat them: the questions are worth their calls again.
    await live.tick_at(moment + 10 * S)
    assert OPEN in {op for op, _, _ in upstream.calls}
    assert len(live.ids_sent()) == 2
