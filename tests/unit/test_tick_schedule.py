"""When a stream ticks next: on its own grid (its first tick plus whole intervals), so the
partners stay spread over the interval as start_jitter placed them, and no wait is longer
than the interval; a tick that took longer than the interval is followed at once. A quiet
stream (upstream listed nothing) waits on to a mark every stream shares, so the process wakes
once for the quiet partners due near it; a stream with traffic keeps its exact phase."""

from __future__ import annotations

import pytest

from poller.service import TICK_MARK, on_the_mark, until_next_tick


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


def test_quiet_streams_due_within_one_mark_wake_together() -> None:
    # Two idle partners due 0.1 s apart inside one mark: one wake serves both.
    first = 1000.0 + on_the_mark(1000.0, 4.05)
    second = 1000.2 + on_the_mark(1000.2, 3.95)
    assert first == pytest.approx(second) == pytest.approx(1004.25)


@pytest.mark.parametrize("due", [0.0, 0.01, 4.24, 4.25, 4.999, 123.4])
def test_a_quiet_stream_waits_less_than_one_mark_longer_never_less(due: float) -> None:
    wait = on_the_mark(1000.0, due)
    assert due <= wait < due + TICK_MARK
    assert ((1000.0 + wait) / TICK_MARK) == pytest.approx(round((1000.0 + wait) / TICK_MARK))


def test_quiet_streams_spread_over_an_interval_keep_their_spread_to_the_mark() -> None:
    # 300 idle partners polling every 5 s wake in 20 groups an interval, not in one.
    wakes = {round(1000.0 + on_the_mark(1000.0, 5.0 * n / 300), 6) for n in range(300)}
    assert len(wakes) == 5.0 / TICK_MARK + 1  # the first and last marks of the span
