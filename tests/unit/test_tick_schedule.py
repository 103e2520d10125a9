"""When a stream ticks next: on its own grid (its first tick plus whole intervals), so the
partners stay spread over the interval as start_jitter placed them, and no wait is longer
than the interval; a tick that took longer than the interval is followed at once. Grids start
on marks every stream shares, so the process wakes once for the partners due at a mark."""

from __future__ import annotations

import pytest

from poller.service import TICK_MARK, grid_origin, until_next_tick


def test_a_quick_tick_waits_out_the_rest_of_its_interval() -> None:
    assert until_next_tick(origin=100.0, started=100.0, now=100.3, interval=5.0) == pytest.approx(
        4.7
    )
    assert until_next_tick(origin=100.0, started=105.0, now=105.2, interval=5.0) == pytest.approx(
        4.8
    )


def test_a_tick_longer_than_the_interval_is_followed_at_once_then_the_grid_again() -> None:
    assert until_next_tick(origin=0.0, started=5.0, now=11.5, interval=5.0) == 0.0
    # The one that followed at once (11.5 to 12.0) waits for its grid's next point.
    assert until_next_tick(origin=0.0, started=11.5, now=12.0, interval=5.0) == pytest.approx(3.0)


def test_after_something_held_every_partner_each_returns_to_its_own_phase() -> None:
    # Two partners placed 2.5 s apart; Kafka held both until t=17, and each tick then took
    # 0.5 s: they tick together once, then each on its own phase again.
    first = 17.5 + until_next_tick(origin=0.0, started=17.0, now=17.5, interval=5.0)
    second = 17.5 + until_next_tick(origin=2.5, started=17.0, now=17.5, interval=5.0)
    assert (first, second) == (pytest.approx(20.0), pytest.approx(22.5))


@pytest.mark.parametrize("elapsed", [0.0, 0.001, 2.5, 4.999, 5.0, 7.5, 123.4])
def test_no_wait_is_longer_than_the_interval_nor_negative(elapsed: float) -> None:
    wait = until_next_tick(origin=10.0, started=10.0, now=10.0 + elapsed, interval=5.0)
    assert 0.0 <= wait <= 5.0
    assert (wait == 0.0) == (elapsed >= 5.0)


def test_streams_that_start_within_one_mark_tick_together_from_then_on() -> None:
    # Two partners' first ticks 0.1 s apart inside one mark: one wake serves both after.
    first, second = grid_origin(1000.05), grid_origin(1000.15)
    assert first == second
    assert 1000.15 + until_next_tick(first, 1000.15, 1000.15, 5.0) == pytest.approx(
        1000.05 + until_next_tick(second, 1000.05, 1000.05, 5.0)
    )


def test_streams_that_start_marks_apart_keep_their_spread() -> None:
    # start_jitter's spread survives, to the mark: 300 partners over 5 s still tick in 20
    # groups an interval, not in one.
    origins = {grid_origin(1000.0 + 5.0 * n / 300) for n in range(300)}
    assert len(origins) == 5.0 / TICK_MARK


@pytest.mark.parametrize("first_tick", [0.0, 0.01, 1000.24, 1000.25, 123456.789])
def test_a_grid_starts_at_most_one_mark_before_its_first_tick(first_tick: float) -> None:
    origin = grid_origin(first_tick)
    assert first_tick - TICK_MARK < origin <= first_tick
    # So the first wait is still at most one interval (the tick is at the grid's point).
    wait = until_next_tick(origin, first_tick, first_tick + 0.3, 5.0)
    off_grid = (first_tick + 0.3 + wait - origin) % 5.0
    assert 0.0 < wait <= 5.0 and min(off_grid, 5.0 - off_grid) == pytest.approx(0.0, abs=1e-6)
