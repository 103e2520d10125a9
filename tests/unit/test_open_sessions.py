"""How far back the fast scan looks, from what the started stream saw open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from poller.streams.open_sessions import DEPARTED_TRIES, OpenSessions
from poller.window import Window

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def test_no_listing_no_answer() -> None:
    assert OpenSessions(timedelta(minutes=1)).look_back_to(T) is None


def test_the_oldest_open_start_or_the_listing_start_bounds_the_look_back() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 10 * S, T - 9 * S, {1: T - 40 * S})
    assert tracker.look_back_to(T) == T - 40 * S
    tracker.record(T - 5 * S, T - 4 * S, {})  # nothing open: the listing's start
    assert tracker.look_back_to(T) == T - 5 * S


def test_a_listing_that_ended_in_the_scans_second_cannot_be_trusted() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - S, T, {1: T - 30 * S})
    assert tracker.look_back_to(T) is None
    assert tracker.look_back_to(T + S) == T - 30 * S


def test_the_newest_usable_listing_wins_and_old_ones_expire() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 100 * S, T - 99 * S, {1: T - 500 * S})
    tracker.record(T - 20 * S, T - 19 * S, {1: T - 30 * S})
    tracker.record(T + 5 * S, T + 6 * S, {1: T - 2 * S})  # after the scan: unusable
    assert tracker.look_back_to(T) == T - 30 * S
    assert tracker.look_back_to(T + 50 * S) == T - 2 * S
    assert tracker.look_back_to(T + 200 * S) is None, "older than the freshness limit"
    tracker.forget()
    assert tracker.look_back_to(T) is None


def test_a_session_gone_from_the_next_complete_listing_is_departed() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    long_ago = T - timedelta(hours=3)
    tracker.record(T - 10 * S, T - 9 * S, {1: long_ago, 2: T - 50 * S})
    assert tracker.departed() == [], "the first listing has nothing to compare with"
    tracker.record(T - 5 * S, T - 4 * S, {2: T - 50 * S, 3: T - 2 * S})
    assert tracker.departed() == [1]
    # Only starts before what the fast scan covers need a fetch of their own.
    assert tracker.departed_windows(T - 300 * S) == [Window(long_ago, long_ago + S)]
    assert tracker.departed_windows(long_ago) == []


def test_departed_starts_close_together_share_one_request() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    start = T - timedelta(hours=2)
    tracker.record(T - 10 * S, T - 9 * S, {1: start, 2: start + 30 * S, 3: start + 600 * S})
    tracker.record(T - 5 * S, T - 4 * S, {})
    assert tracker.departed_windows(T) == [
        Window(start, start + 31 * S),
        Window(start + 600 * S, start + 601 * S),
    ]


def test_a_departed_session_is_tried_a_few_times_then_left_to_the_sweep() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 10 * S, T - 9 * S, {1: T - 3600 * S, 2: T - 3000 * S})
    tracker.record(T - 5 * S, T - 4 * S, {})
    tracker.tried(found=[2])
    assert tracker.departed() == [1]
    for _ in range(DEPARTED_TRIES - 1):
        assert tracker.departed() == [1]
        tracker.tried(found=[])
    assert tracker.departed() == []


def test_an_incomplete_listing_says_nothing_about_departures() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 10 * S, T - 9 * S, {1: T - 3600 * S})
    tracker.forget()
    tracker.record(T - 5 * S, T - 4 * S, {})
    assert tracker.departed() == []
