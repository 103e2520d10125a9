"""When a stream ticks next: on its own grid (its first tick plus whole intervals), so the
partners stay spread over the interval as start_jitter placed them, and no wait is longer
than the interval."""

from __future__ import annotations

import pytest

from poller.service import until_next_tick


def test_a_quick_tick_waits_out_the_rest_of_its_interval() -> None:
    assert until_next_tick(origin=100.0, now=100.3, interval=5.0) == pytest.approx(4.7)
    assert until_next_tick(origin=100.0, now=105.2, interval=5.0) == pytest.approx(4.8)


def test_after_something_held_every_partner_each_returns_to_its_own_phase() -> None:
    # Two partners placed 2.5 s apart; Kafka held both until t=17: they do not tick together.
    first = 17.0 + until_next_tick(origin=0.0, now=17.0, interval=5.0)
    second = 17.0 + until_next_tick(origin=2.5, now=17.0, interval=5.0)
    assert (first, second) == (pytest.approx(20.0), pytest.approx(17.5))


@pytest.mark.parametrize("elapsed", [0.0, 0.001, 2.5, 4.999, 5.0, 7.5, 123.4])
def test_no_wait_is_longer_than_the_interval_nor_negative(elapsed: float) -> None:
    wait = until_next_tick(origin=10.0, now=10.0 + elapsed, interval=5.0)
    assert 0.0 < wait <= 5.0
