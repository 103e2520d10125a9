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
