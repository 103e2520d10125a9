"""How far back the fast scan looks, from what the started stream saw open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from poller.streams.open_sessions import OpenSessions

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def test_no_listing_no_answer() -> None:
    assert OpenSessions(timedelta(minutes=1)).look_back_to(T) is None


def test_the_oldest_open_start_or_the_listing_start_bounds_the_look_back() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 10 * S, T - 9 * S, oldest_start=T - 40 * S)
    assert tracker.look_back_to(T) == T - 40 * S
    tracker.record(T - 5 * S, T - 4 * S, oldest_start=None)  # nothing open: the listing's start
    assert tracker.look_back_to(T) == T - 5 * S


def test_a_listing_that_ended_in_the_scans_second_cannot_be_trusted() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - S, T, oldest_start=T - 30 * S)
    assert tracker.look_back_to(T) is None
    assert tracker.look_back_to(T + S) == T - 30 * S


def test_the_newest_usable_listing_wins_and_old_ones_expire() -> None:
    tracker = OpenSessions(timedelta(minutes=1))
    tracker.record(T - 100 * S, T - 99 * S, oldest_start=T - 500 * S)
    tracker.record(T - 20 * S, T - 19 * S, oldest_start=T - 30 * S)
    tracker.record(T + 5 * S, T + 6 * S, oldest_start=T - 2 * S)  # after the scan: unusable
    assert tracker.look_back_to(T) == T - 30 * S
    assert tracker.look_back_to(T + 50 * S) == T - 2 * S
    assert tracker.look_back_to(T + 200 * S) is None, "older than the freshness limit"
    tracker.forget()
    assert tracker.look_back_to(T) is None
