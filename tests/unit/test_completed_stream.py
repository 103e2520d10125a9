"""The completed stream and the sweep at their seam: where a first start begins, long
sessions delivered as soon as they leave the open listing, and late completions found in the
current hour, never before where the feed began."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from poller.events import EventBuilder, PiiPolicy
from poller.settings import (
    CompletedStreamSettings,
    GlanceSettings,
    ReconcileSettings,
    StartedStreamSettings,
    TopicSettings,
)
from poller.state import StateStore
from poller.streams.completed import CompletedStream
from poller.streams.feed import PartnerFeed
from poller.streams.open_sessions import OpenSessions
from poller.streams.reconcile import ReconcileSweep
from poller.streams.scan import Scanner
from poller.streams.started import StartedStream
from tests.unit.fakes import T0, MemoryPublisher, MemoryUpstream, Session

M = timedelta(minutes=1)
H = timedelta(hours=1)
GLANCE = GlanceSettings(base_url="http://upstream.invalid")
COMPLETED = TopicSettings().completed


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(tmp_path / "state.sqlite3")
    yield store
    store.close()


class Partner:
    """One partner's streams over an in-memory upstream and an in-memory Kafka."""

    def __init__(self, upstream: MemoryUpstream, state: StateStore, **completed: object) -> None:
        self.upstream = upstream
        self.publisher = MemoryPublisher()
        builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
        feed = PartnerFeed(1, builder, self.publisher, state, started_enabled=False)
        scanner = Scanner(upstream, feed, upstream.page_size, asyncio.Event())  # type: ignore[arg-type]
        settings = CompletedStreamSettings(
            **{"overlap": 5 * 60, "start_lookback": 3600, **completed}
        )  # type: ignore[arg-type]
        self.open_sessions = OpenSessions(timedelta(minutes=5))
        self.completed = CompletedStream(scanner, GLANCE, settings, self.open_sessions)
        self.started = StartedStream(
            scanner, GLANCE, StartedStreamSettings(), ReconcileSettings(), self.open_sessions
        )
        self.sweep = ReconcileSweep(
            scanner, GLANCE, settings, ReconcileSettings(bucket=3600, horizon=86400)
        )

    def delivered(self) -> list[int]:
        return sorted(self.publisher.session_ids(COMPLETED))

    def at(self, moment: object) -> None:
        self.upstream.now = moment  # type: ignore[assignment]


async def test_a_first_start_reads_nothing_before_start_lookback_and_the_sweep_neither(
    state: StateStore,
) -> None:
    sessions = [
        Session(1, T0 - 20 * H, 60),  # inside the horizon, before the lookback
        Session(2, T0 - 3 * H, 60),
        Session(3, T0 - 30 * M, 60),  # inside the lookback
    ]
    partner = Partner(MemoryUpstream(sessions, T0), state)
    await partner.completed.tick()
    await partner.sweep.tick()
    assert partner.delivered() == [3]
    calls = [window for operation, window, _ in partner.upstream.calls]
    assert min(w.start for w in calls) >= T0 - H, "something before the lookback was asked for"


async def test_a_long_session_arrives_one_tick_after_it_leaves_the_open_listing(
    state: StateStore,
) -> None:
    long = Session(9, T0 - 30 * M, None)  # started inside the lookback, open for hours
    partner = Partner(MemoryUpstream([long], T0), state)
    await partner.started.tick()
    await partner.completed.tick()
    # Hours later the fast scan's window has long passed its start.
    for step in range(1, 7 * 60, 10):
        partner.at(T0 + step * M)
        await partner.completed.tick()
    partner.at(T0 + 7 * H)
    long.duration = int((T0 + 7 * H - long.start).total_seconds()) - 30  # ended 30 s ago
    await partner.completed.tick()
    assert partner.delivered() == [], "invisible to the fast scan"
    await partner.started.tick()  # gone from the open listing
    await partner.completed.tick()
    assert partner.delivered() == [9], "the sweep never ran: its departure fetched it"


async def test_the_sweep_finds_a_late_completion_in_the_current_hour(state: StateStore) -> None:
    hour = T0.replace(minute=0)
    late = Session(5, hour + 2 * M, None)
    partner = Partner(MemoryUpstream([late], hour + 40 * M), state, overlap=60)
    await partner.completed.tick()
    late.duration = 30 * 60  # ended at :32, long after the fast scan passed its start
    partner.at(hour + 45 * M)
    await partner.completed.tick()
    assert partner.delivered() == []
    summary = await partner.sweep.tick()
    assert partner.delivered() == [5], "found before the hour is over"
    assert summary.late_completions == 1
