"""A backfill's range in windows (poller/backfill_windows.py): the cut, and resuming only what
a window's own cursor proves done."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from poller.backfill_windows import (
    PAGES_PER_WINDOW,
    STEPS,
    WINDOWS_PER_CALL,
    Outcome,
    RangeWindows,
    cut,
)
from poller.cursor import Cursor
from poller.errors import PublishFailed
from poller.limiter import ConcurrencyLimiter, HeldPages
from poller.settings import TopicSettings
from poller.state import StateStore
from poller.streams.scan import Scanner
from poller.window import Window, buckets
from tests.unit.fakes import MemoryPublisher, MemoryUpstream, Session
from tests.unit.test_pipeline import scanner_for

T0 = datetime(2025, 11, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("span", "pages", "concurrency", "step"),
    [
        # A window per 8 pages...
        (timedelta(days=29), 100, 4, timedelta(days=2)),
        (timedelta(days=70), 3, 4, timedelta(days=7)),
        (timedelta(days=2), 16, 4, timedelta(days=1)),
        # ...up to 4 per call allowed at once...
        (timedelta(days=29), 100, 1, timedelta(days=7)),
        (timedelta(days=20), 1000, 16, timedelta(hours=6)),
        (timedelta(days=2), 1000, 16, timedelta(minutes=30)),
        (timedelta(hours=3), 5000, 16, timedelta(minutes=1)),
        # ...and more when a week is still too short.
        (timedelta(days=365), 10_000, 4, timedelta(days=7)),
    ],
)
def test_the_range_is_cut_into_a_window_per_few_pages_enough_to_keep_the_calls_busy(
    span: timedelta, pages: int, concurrency: int, step: timedelta
) -> None:
    start = T0 + timedelta(minutes=7)
    windows = cut(Window(start, start + span), timedelta(days=31), pages, concurrency)
    assert windows[0].start == start and windows[-1].end == start + span
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert max(w.span for w in windows) == step
    assert all(w.end.timestamp() % step.total_seconds() == 0 for w in windows[:-1])
    wanted = min(-(-pages // PAGES_PER_WINDOW), WINDOWS_PER_CALL * concurrency)
    assert len(windows) >= wanted or step == timedelta(minutes=1)
    # The next longer step would have given too few.
    longer = [s for s in STEPS if s > step]
    if longer:
        assert span / min(longer) < wanted


def test_windows_never_exceed_the_configured_maximum() -> None:
    windows = cut(Window(T0, T0 + timedelta(days=3)), timedelta(seconds=30), 1000, 4)
    assert all(w.span <= timedelta(seconds=30) for w in windows)
    assert windows[-1].end == T0 + timedelta(days=3)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(tmp_path / "state.sqlite3")
    yield store
    store.close()


def test_a_window_is_resumed_only_from_its_own_cursor_whatever_the_cut_was(
    state: StateStore,
) -> None:
    span = Window(T0, T0 + timedelta(days=8))
    scanner = scanner_for(MemoryUpstream([], T0), MemoryPublisher(), state)
    # A first run cut the range in 2-day windows: the first and the last are done, the second
    # half-way.
    first = RangeWindows(scanner, "backfill:r", span)
    two_days = cut(span, timedelta(days=31), 4 * PAGES_PER_WINDOW, 1)
    assert max(w.span for w in two_days) == timedelta(days=2)
    first.pending(two_days)
    state.commit(
        1,
        cursors={
            first.stream(0): Cursor(two_days[0].end),
            first.stream(1): Cursor(two_days[1].start, two_days[1], 42),
            first.stream(3): Cursor(two_days[3].end),
        },
    )
    # The same cut resumes them: the first and the last are done, the second at its token.
    again = RangeWindows(scanner, "backfill:r", span)
    pending = again.pending(two_days)
    assert pending[0][1] == Cursor(two_days[1].start, two_days[1], 42)
    assert len(pending) == len(two_days) - 2 and again.resumed
    # Another cut (days) trusts none of the windows' cursors: every day after the first two
    # (the range's own cursor: done without a gap) is read again, nothing is skipped (the ids
    # already sent are remembered, so nothing is sent twice).
    days = cut(span, timedelta(days=31), 8 * PAGES_PER_WINDOW, 4)
    assert max(w.span for w in days) == timedelta(days=1)
    other = RangeWindows(scanner, "backfill:r", span)
    resumed = other.pending(days)
    covered = [cursor.window for _, cursor in resumed]
    assert covered == days[2:]
    assert all(cursor.next_id == 0 for _, cursor in resumed)


def _most_awaiting_kafka(log: list[tuple[str, int]]) -> int:
    """The most pages handed to Kafka and not yet acknowledged at once (one send per page)."""
    most = now = 0
    for what, _count in log:
        now += 1 if what == "sent" else -1
        most = max(most, now)
    return most


def _backfill(
    state: StateStore, publisher: MemoryPublisher, held: HeldPages | None
) -> tuple[RangeWindows, Callable[[], Awaitable[Outcome]]]:
    """Eight one-day windows of 3-session pages, four fetched at once."""
    span = Window(T0, T0 + timedelta(days=8))
    sessions = [Session(i, T0 + timedelta(hours=i), 60) for i in range(1, 8 * 24)]
    upstream = MemoryUpstream(sessions, span.end + timedelta(days=1))
    feed = scanner_for(upstream, publisher, state).feed
    scanner = Scanner(upstream, feed, upstream.page_size, asyncio.Event(), held)  # type: ignore[arg-type]
    plan = RangeWindows(scanner, "backfill:r", span)
    pending = plan.pending(buckets(span, timedelta(days=1)))

    def fetch() -> Awaitable[Outcome]:
        return plan.fetch(pending, 4, ConcurrencyLimiter(4), lambda sessions, flight: None)

    return plan, fetch


async def test_the_windows_in_flight_never_hold_more_pages_than_their_shared_bound(
    state: StateStore,
) -> None:
    publisher = MemoryPublisher()
    publisher.ack_turns = 5  # windows interleave while their pages await Kafka
    held = HeldPages(2)
    plan, fetch = _backfill(state, publisher, held)
    outcome = await fetch()
    assert outcome.failure is None and plan.complete()
    # Every session once, in four windows at a time, never more than two pages built and
    # awaiting Kafka between them.
    assert sorted(publisher.session_ids(TopicSettings().completed)) == list(range(1, 8 * 24))
    assert outcome.pages > 8 * 2
    assert _most_awaiting_kafka(publisher.log) <= 2
    assert held.peak == 2 and held.held == 0


async def test_without_the_bound_the_windows_hold_two_pages_each(state: StateStore) -> None:
    publisher = MemoryPublisher()
    publisher.ack_turns = 5
    plan, fetch = _backfill(state, publisher, None)
    outcome = await fetch()
    assert outcome.failure is None and plan.complete()
    assert _most_awaiting_kafka(publisher.log) > 4  # what the bound above keeps to two


async def test_a_window_that_fails_gives_its_room_back(state: StateStore) -> None:
    publisher = MemoryPublisher()
    publisher.ack_turns = 5
    publisher.fail_ack_calls = {6}
    held = HeldPages(3)
    plan, fetch = _backfill(state, publisher, held)
    outcome = await fetch()
    assert isinstance(outcome.failure, PublishFailed) and not plan.complete()
    # The failed page and those stopped after it are given back: none is left held.
    assert held.held == 0 and not held.full() and held.peak == 3
