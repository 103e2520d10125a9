"""A backfill's range in windows (poller/backfill_windows.py): the cut, and resuming only what
a window's own cursor proves done."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from poller.backfill_windows import PAGES_PER_WINDOW, STEPS, WINDOWS_PER_CALL, RangeWindows, cut
from poller.cursor import Cursor
from poller.state import StateStore
from poller.window import Window
from tests.unit.fakes import MemoryPublisher, MemoryUpstream
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
