"""Upstream's clock, trusted only within the tolerance of the host's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from poller import metrics
from poller.glance.client import ServerClock
from tests.integration.hostile import http_date

S = timedelta(seconds=1)


def bounded_count() -> float:
    value = metrics.REGISTRY.get_sample_value("glance_poller_upstream_clock_bounded_total")
    return value or 0.0


def test_within_the_tolerance_upstream_is_now_and_never_goes_back() -> None:
    host = datetime.now(UTC).replace(microsecond=0)
    clock = ServerClock(tolerance=300)
    clock.observe(http_date(host + 60 * S))
    clock.observe(http_date(host + 58 * S))  # an older answer that arrived late
    assert clock.latest == host + 60 * S


def test_a_date_beyond_the_tolerance_is_bounded_by_the_host_clock() -> None:
    before = bounded_count()
    clock = ServerClock(tolerance=300)
    seen = clock.observe("Thu, 01 Jan 2099 00:00:00 GMT")
    ceiling = datetime.now(UTC) + 300 * S
    assert seen is not None and seen <= ceiling and seen >= ceiling - 5 * S
    past = clock.observe("Mon, 01 Jan 1990 00:00:00 GMT")
    floor = datetime.now(UTC) - 300 * S
    assert past is not None and floor - 5 * S <= past <= floor
    assert bounded_count() == before + 2
    now = clock.now()
    assert now is not None and now <= datetime.now(UTC) + 300 * S


def test_garbage_dates_are_ignored() -> None:
    clock = ServerClock(tolerance=300)
    for header in ("", "yesterday", "Thu, 99 Foo 20999 99:99:99 GMT", "\x00" * 50):
        assert clock.observe(header) is None
    assert clock.latest is None and clock.now() is None


class Monotonic:
    """The host's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream_clock(ago: int, tolerance: int) -> tuple[datetime, Monotonic, ServerClock]:
    """Upstream's time ``ago`` seconds before the host's (whole seconds, as ``Date`` has), the
    host's monotonic clock moved by hand, and a clock reading them."""
    mono = Monotonic()
    host = datetime.now(UTC).replace(microsecond=0) - ago * S
    return host, mono, ServerClock(tolerance=tolerance, monotonic=mono)


def test_a_clock_that_stands_still_is_never_carried_forward() -> None:
    host, mono, clock = upstream_clock(ago=0, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 6
    clock.observe(http_date(host))  # six seconds later, the same instant: a frozen clock
    mono.now += 30
    assert clock.now() == host
    assert not clock.fresh(1.0), "a stale reading of a frozen clock must be asked again"


def test_a_clock_keeping_pace_is_carried_forward_never_ahead_of_upstream() -> None:
    host, mono, clock = upstream_clock(ago=30, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 6.4
    clock.observe(http_date(host + 6 * S))  # read 6.4 s later: upstream's 6.4 s, floored
    mono.now += 20
    assert clock.now() == host + 26 * S, "the reading plus the host's time since it"
    # Upstream's true time then is at least host + 26.4 s: the estimate is not ahead of it.
    assert clock.fresh(1.0)
    mono.now += 61
    assert not clock.fresh(1.0), "carried forward a minute at most"


def test_a_clock_that_stops_is_no_longer_carried_forward() -> None:
    host, mono, clock = upstream_clock(ago=30, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 6
    clock.observe(http_date(host + 6 * S))
    mono.now += 6
    clock.observe(http_date(host + 6 * S))  # stopped (an emulator's clock, set to speed 0)
    mono.now += 10
    assert clock.now() == host + 6 * S


def test_a_clock_that_jumps_is_not_carried_forward() -> None:
    host, mono, clock = upstream_clock(ago=200, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 6
    clock.observe(http_date(host + 120 * S))  # moved on by hand, then maybe frozen again
    mono.now += 1
    clock.observe(http_date(host + 120 * S))  # a second answer says so too
    mono.now += 10
    assert clock.now() == host + 120 * S


def test_one_answer_dated_ahead_of_upstream_is_not_believed_alone() -> None:
    """One node of a farm two minutes fast (within the tolerance): believed, it would carry the
    scan two minutes into upstream's future and leave what ends there to the sweep."""
    host, mono, clock = upstream_clock(ago=30, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 1
    clock.observe(http_date(host + 121 * S))
    assert clock.now() == host
    assert not clock.fresh(60.0), "an answer in doubt is settled by asking again"
    mono.now += 1
    clock.observe(http_date(host + 2 * S))  # the next answer, asked after it: refuted
    assert clock.now() == host + 2 * S
    assert clock.fresh(1.0)


def test_a_clock_moved_forward_is_followed_once_a_later_answer_agrees() -> None:
    host, mono, clock = upstream_clock(ago=3000, tolerance=3600)
    clock.observe(http_date(host))
    mono.now += 1
    clock.observe(http_date(host + 2401 * S))  # the clock moved 40 minutes
    mono.now += 1
    clock.observe(http_date(host + 2402 * S))
    assert clock.now() == host + 2402 * S


def test_a_clock_moved_back_is_followed_once_a_later_answer_agrees() -> None:
    """Kept at the latest reading, the estimate would run the move's length ahead of upstream
    for as long as the daemon runs."""
    host, mono, clock = upstream_clock(ago=30, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 1
    clock.observe(http_date(host - 89 * S))  # moved back 90 s
    assert clock.now() == host, "one answer alone does not move it back either"
    mono.now += 1
    clock.observe(http_date(host - 88 * S))
    assert clock.now() == host - 88 * S


def test_answers_straying_opposite_ways_do_not_confirm_each_other() -> None:
    host, mono, clock = upstream_clock(ago=100, tolerance=300)
    clock.observe(http_date(host))
    mono.now += 1
    clock.observe(http_date(host - 89 * S))  # one node behind...
    mono.now += 1
    clock.observe(http_date(host + 92 * S))  # ...and another ahead: neither is believed
    assert clock.now() == host


def test_a_farm_with_one_fast_node_never_carries_the_estimate_ahead() -> None:
    """Round robin over two nodes, one two minutes fast, with calls overlapping (several
    streams share a partner's clock): two fast answers can be asked one after the other while
    a correct one, asked earlier, is read between them. The correct one refutes the first."""
    host, mono, clock = upstream_clock(ago=60, tolerance=300)
    clock.observe(http_date(host), asked_at=mono.now)
    for step in range(1, 40):
        mono.now += 0.5
        fast = step % 2 == 1
        moment = host + int(mono.now - 1000) * S + (120 * S if fast else 0 * S)
        # Each answer was asked 0.7 s before it was read: the calls overlap.
        clock.observe(http_date(moment), asked_at=mono.now - 0.7)
        now = clock.now()
        assert now is not None and now <= host + (int(mono.now - 1000) + 5) * S, step


def test_a_real_jump_is_followed_once_the_answers_asked_before_it_are_in() -> None:
    host, mono, clock = upstream_clock(ago=3000, tolerance=3600)
    clock.observe(http_date(host), asked_at=mono.now)
    mono.now += 2
    clock.observe(http_date(host + 2400 * S), asked_at=mono.now - 0.5)
    mono.now += 1
    # Asked before the jump's answer came back, served before the clock moved, read after it.
    clock.observe(http_date(host + 1 * S), asked_at=mono.now - 2)
    assert clock.now() == host + 1 * S
    for _ in range(2):
        mono.now += 1
        clock.observe(http_date(host + 2401 * S), asked_at=mono.now - 0.2)
    assert clock.now() == host + 2401 * S


def test_a_clock_running_thirty_times_fast_is_followed() -> None:
    """The emulator's fast clock (speed 30): each answer is far ahead of the last."""
    host, mono, clock = upstream_clock(ago=3000, tolerance=3600)
    for step in range(10):
        clock.observe(http_date(host + 30 * step * S))
        mono.now += 1
    now = clock.now()
    assert now is not None and now >= host + 30 * 8 * S
