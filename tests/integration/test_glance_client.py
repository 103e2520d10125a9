"""The client against the emulator over real HTTP: paging, windows, server time, and how
every kind of answer maps onto the error taxonomy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from pydantic import SecretStr

from poller.errors import AuthenticationFailed, RetriableUpstreamError, UnknownOperation
from poller.glance.client import COMPLETED_SESSIONS, GlanceClient
from poller.settings import GlanceSettings, Partner, RetrySettings
from poller.window import Window
from tests.integration.harness import API_KEY, CLOCK_TRUSTED, PARTNER_ID, Emulator

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ONE_ATTEMPT = RetrySettings(max_attempts=1)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(
    http: aiohttp.ClientSession,
    emulator: Emulator,
    *,
    key: str = API_KEY,
    retry: RetrySettings = ONE_ATTEMPT,
    timeout: float = 5.0,
) -> GlanceClient:
    settings = GlanceSettings(
        base_url=emulator.url, request_timeout=timeout, clock_tolerance=CLOCK_TRUSTED
    )
    return GlanceClient(http, settings, Partner(PARTNER_ID, SecretStr(key)), retry)


async def all_ids(glance: GlanceClient, window: Window, page_size: int) -> tuple[list[int], int]:
    ids: list[int] = []
    pages = 0
    async for page in glance.session_pages(COMPLETED_SESSIONS, window, page_size):
        pages += 1
        ids.extend(r.raw["id"] for r in page.records)
    return ids, pages


async def test_paging_covers_every_session_once(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 1234,
            "from": "2026-03-10T09:00:00Z",
            "until": "2026-03-10T11:00:00Z",
            "maxDuration": 600,
        },
    )
    expected = sorted(s["id"] for s in emulator.sessions("ended"))
    ids, pages = await all_ids(client(http, emulator), Window(NOW - timedelta(hours=3), NOW), 100)
    # Within a page records are grouped by user, so compare as sorted lists (catches repeats).
    assert sorted(ids) == expected
    assert pages == 13


async def test_server_time_comes_from_upstream(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    glance = client(http, emulator)
    assert await glance.server_now() == NOW
    emulator.advance(6 * 3600)
    await glance.session_counts(Window(NOW, NOW + timedelta(hours=1)), status="A")
    assert glance.clock.latest == NOW, "one answer six hours on is not believed alone"
    assert await glance.server_now() == NOW + timedelta(hours=6), "a second one agrees"
    assert emulator.stats()["PartnerSessionCounts"]["total"] == 3


async def test_one_answer_dated_ahead_does_not_move_server_time(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    glance = client(http, emulator)
    assert await glance.server_now() == NOW
    emulator.admin("POST", "/admin/faults", {"calls": [{"kind": "date_skew", "offset": 120}]})
    emulator.advance(5)
    # The skewed answer, then one more to settle it: upstream's own time wins.
    assert await glance.server_now(max_age=0) == NOW + timedelta(seconds=5)
    assert emulator.stats()["PartnerSessionCounts"]["total"] == 3


async def test_wrong_key_is_fatal(http: aiohttp.ClientSession, emulator: Emulator) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await client(http, emulator, key="nope", retry=RetrySettings(max_attempts=5)).server_now()
    assert caught.value.exit_code == 3
    assert "nope" not in str(caught.value)
    assert emulator.stats()["PartnerSessionCounts"]["total"] == 1


# An authentication fault that says nothing of the key: the service's own trouble reaching its
# back end (an SSPI or TLS handshake), which passes.
SSPI_FAULT = {
    "kind": "error500",
    "operation": "PartnerSessionCounts",
    "message": "A call to SSPI failed, see inner exception.",
    "exceptionType": "System.Security.Authentication.AuthenticationException",
}


def on_host_clock(glance: GlanceClient, start: float = 1000.0) -> list[float]:
    """The host's monotonic time as the client sees it, set by the test."""
    host = [start]
    glance.clock.monotonic = lambda: host[0]
    return host


def answered_by_sspi_faults(
    http: aiohttp.ClientSession, emulator: Emulator
) -> tuple[GlanceClient, list[float]]:
    """A client whose next ten counts calls get the SSPI fault, on a host clock set by hand."""
    emulator.admin("POST", "/admin/faults", {"calls": [SSPI_FAULT | {"count": 10}]})
    glance = client(http, emulator)
    return glance, on_host_clock(glance)


async def test_one_authentication_fault_that_names_no_key_is_retried(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    emulator.admin("POST", "/admin/faults", {"calls": [SSPI_FAULT | {"count": 1}]})
    retry = RetrySettings(max_attempts=2, initial_delay=0.01)
    assert await client(http, emulator, retry=retry).server_now() == NOW
    assert emulator.stats()["PartnerSessionCounts"]["total"] == 2


async def test_authentication_faults_every_answer_for_a_minute_are_a_rejection(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    glance, host = answered_by_sspi_faults(http, emulator)
    for elapsed in (0.0, 30.0):
        host[0] = 1000.0 + elapsed
        with pytest.raises(RetriableUpstreamError) as doubted:
            await glance.server_now()
        assert doubted.value.reason == "authentication"
        assert "SSPI" in str(doubted.value)
    host[0] = 1060.0  # the third answer, a minute after the first
    with pytest.raises(AuthenticationFailed) as caught:
        await glance.server_now()
    assert f"partner {PARTNER_ID}:" in str(caught.value)
    assert "A call to SSPI failed" in str(caught.value)


async def test_two_authentication_faults_a_minute_apart_are_not_yet_a_rejection(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    glance, host = answered_by_sspi_faults(http, emulator)
    for elapsed in (0.0, 61.0):
        host[0] = 1000.0 + elapsed
        with pytest.raises(RetriableUpstreamError):
            await glance.server_now()


async def test_an_answer_between_authentication_faults_starts_the_minute_again(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    glance = client(http, emulator)
    host = on_host_clock(glance)
    for start in (0.0, 55.0):
        emulator.admin("POST", "/admin/faults", {"calls": [SSPI_FAULT | {"count": 2}]})
        for elapsed in (start, start + 50.0):
            host[0] = 1000.0 + elapsed
            with pytest.raises(RetriableUpstreamError):
                await glance.server_now()
        host[0] += 2.0
        assert await glance.server_now() == NOW


async def test_unknown_operation(http: aiohttp.ClientSession, emulator: Emulator) -> None:
    with pytest.raises(UnknownOperation):
        await client(http, emulator).call("PartnerNoSuchThing", {})


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"kind": "error500"}, "fault"),
        ({"kind": "throttle429", "retryAfter": 7}, "throttled"),
        ({"kind": "throttle503", "retryAfter": 3}, "throttled"),
        ({"kind": "invalid_json"}, "invalid_json"),
        ({"kind": "bad_shape"}, "bad_shape"),
        ({"kind": "truncate"}, "truncated"),
        ({"kind": "reset"}, "connection"),
        ({"kind": "timeout"}, "timeout"),
    ],
)
async def test_faults_are_retriable_with_a_reason(
    http: aiohttp.ClientSession, emulator: Emulator, fault: dict, reason: str
) -> None:
    emulator.admin(
        "POST", "/admin/faults", {"calls": [fault | {"operation": COMPLETED_SESSIONS, "count": 1}]}
    )
    glance = client(http, emulator, timeout=1.0)
    with pytest.raises(RetriableUpstreamError) as caught:
        await all_ids(glance, Window(NOW - timedelta(hours=1), NOW), 10)
    assert caught.value.reason == reason
    if "retryAfter" in fault:
        assert caught.value.retry_after == fault["retryAfter"]


async def test_retry_after_in_http_date_form(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    emulator.admin(
        "POST",
        "/admin/faults",
        {
            "calls": [
                {
                    "kind": "throttle503",
                    "retryAfter": 9,
                    "retryAfterForm": "date",
                    "operation": COMPLETED_SESSIONS,
                }
            ]
        },
    )
    with pytest.raises(RetriableUpstreamError) as caught:
        await all_ids(client(http, emulator), Window(NOW - timedelta(hours=1), NOW), 10)
    assert caught.value.retry_after == pytest.approx(9, abs=1)


async def test_a_fault_is_retried_and_the_scan_completes(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 50,
            "from": "2026-03-10T10:00:00Z",
            "until": "2026-03-10T11:00:00Z",
            "maxDuration": 600,
        },
    )
    emulator.admin(
        "POST",
        "/admin/faults",
        {"calls": [{"kind": "error500", "operation": COMPLETED_SESSIONS, "count": 2}]},
    )
    retry = RetrySettings(initial_delay=0.01, max_delay=0.05, max_attempts=3)
    ids, _ = await all_ids(
        client(http, emulator, retry=retry), Window(NOW - timedelta(hours=3), NOW), 20
    )
    assert sorted(ids) == sorted(s["id"] for s in emulator.sessions("ended"))


async def test_server_time_is_refreshed_when_stale(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    # Found by the benchmark: a tick that made no call kept the old instant, and the live
    # feed stalled until some other stream happened to call upstream.
    glance = client(http, emulator)
    assert await glance.server_now() == NOW
    emulator.advance(90)
    assert await glance.server_now(max_age=3600) == NOW, "a fresh reading is reused"
    assert await glance.server_now(max_age=0) == NOW + timedelta(seconds=90)
    emulator.advance(30)
    later = NOW + timedelta(seconds=90)
    assert await glance.server_now(max_age=3600, later_than=later) == later + timedelta(
        seconds=30
    ), "a reading no later than the caller's cursor is refreshed, however fresh"


async def test_each_page_carries_the_time_upstream_served_it(
    http: aiohttp.ClientSession, emulator: Emulator
) -> None:
    # The started stream trusts its listing only from the moment its last page was served;
    # the shared clock may by then hold an older answer that arrived late.
    emulator.admin(
        "POST",
        "/admin/traffic",
        {"partnerId": PARTNER_ID, "count": 300, "from": "2026-03-10T09:00:00Z",
         "until": "2026-03-10T11:00:00Z", "maxDuration": 600},
    )  # fmt: skip
    glance = client(http, emulator)
    served = []
    async for page in glance.session_pages(
        COMPLETED_SESSIONS, Window(NOW - timedelta(hours=3), NOW), 100
    ):
        served.append(page.served_at)
        if len(served) == 1:
            emulator.advance(3600)  # page 2 may already be prefetched; page 3 cannot be
    assert served[0] == NOW
    assert served[-1] == NOW + timedelta(hours=1)
    assert served == sorted(served)
