"""Latency per call, the per-partner concurrency limit, and live traffic control at run time."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from emulator_testkit import API_KEY, PARTNER_ID, SERVICE, T0, Emulator, iso, records

from poller.emulator.behaviour import BehaviourError, ServiceBehaviour, parse_duration
from poller.emulator.cli import add_arguments, build_state

COMPLETED = "PartnerCompletedSessions"
WINDOW = {"startRange": iso(T0 - timedelta(hours=3)), "endRange": iso(T0)}
OTHER_PARTNER, OTHER_KEY = 777, "other-key"


def listing(partner_id: int = PARTNER_ID, api_key: str = API_KEY, n: int = 100) -> dict[str, Any]:
    return {
        "partnerId": partner_id,
        "apiKey": api_key,
        **WINDOW,
        "sessionKey": "",
        "nResults": n,
        "nextId": 0,
    }


async def with_sessions(emulator: Emulator, count: int) -> list[int]:
    starts = [T0 - timedelta(hours=2) + timedelta(seconds=10 * i) for i in range(count)]
    return await emulator.add_sessions(
        *({"startTime": iso(s), "endTime": iso(s + timedelta(seconds=5))} for s in starts)
    )


async def timed_call(emulator: Emulator, params: dict[str, Any]) -> tuple[float, int, Any]:
    started = time.perf_counter()
    async with emulator.http.post(emulator.url(SERVICE + COMPLETED), json=params) as response:
        body = await response.read()
        return time.perf_counter() - started, response.status, (response.headers, body)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("400ms", 0.4), ("0.1ms", 0.0001), ("2s", 2.0), ("1.5", 1.5), (3, 3.0), ("1m", 60.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", -1, True, "1d"])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(BehaviourError):
        parse_duration(bad, "x")


async def test_no_latency_and_no_limit_by_default(emulator: Emulator) -> None:
    assert await emulator.admin("GET", "/admin/service") == {
        "latency": 0.0,
        "latencyPerRecord": 0.0,
        "maxConcurrent": 0,
        "throttle503Share": 0.0,
        "retryAfter": 1.0,
    }
    results = await asyncio.gather(*(timed_call(emulator, listing()) for _ in range(20)))
    assert {status for _elapsed, status, _answer in results} == {200}


async def test_latency_is_fixed_plus_per_record(emulator: Emulator) -> None:
    await with_sessions(emulator, 10)
    answer = await emulator.admin(
        "POST", "/admin/service", {"latency": "200ms", "latencyPerRecord": 0.02}
    )
    assert (answer["latency"], answer["latencyPerRecord"]) == (0.2, 0.02)
    elapsed, status, (_headers, body) = await timed_call(emulator, listing())
    assert status == 200 and len(records(orjson.loads(body)["d"])) == 10
    assert elapsed >= 0.2 + 10 * 0.02
    # A page of two records costs less.
    elapsed_small, _status, _answer = await timed_call(emulator, listing(n=2))
    assert 0.2 + 2 * 0.02 <= elapsed_small < elapsed
    # An ASP.NET fault is the service's answer too: it takes the fixed latency.
    elapsed_auth, status, _answer = await timed_call(emulator, listing(api_key="wrong"))
    assert status == 500 and elapsed_auth >= 0.2


async def test_concurrency_limit_refuses_with_retry_after_and_counts(
    emulator: Emulator,
) -> None:
    await emulator.admin("POST", "/admin/partners", {"partnerId": OTHER_PARTNER, "apiKey": "k"})
    await emulator.admin(
        "POST", "/admin/service", {"latency": 0.3, "maxConcurrent": 2, "retryAfter": 3}
    )
    results = await asyncio.gather(*(timed_call(emulator, listing()) for _ in range(5)))
    statuses = sorted(status for _elapsed, status, _answer in results)
    assert statuses == [200, 200, 429, 429, 429]
    for elapsed, status, (headers, _body) in results:
        if status == 429:
            assert headers["Retry-After"] == "3"
            assert elapsed < 0.25  # refused at once, not after the latency
    # The limit is per partner: another partner's calls are not refused meanwhile.
    mixed = await asyncio.gather(
        timed_call(emulator, listing()),
        timed_call(emulator, listing()),
        timed_call(emulator, listing(OTHER_PARTNER, "k")),
    )
    assert [status for _e, status, _a in mixed] == [200, 200, 200]
    stats = await emulator.admin("GET", "/admin/stats")
    assert stats["partners"][str(PARTNER_ID)] == {
        "calls": 7,
        "admitted": 4,
        "throttled": 3,
        "inFlight": 0,
        "peakConcurrent": 2,
    }
    assert stats["partners"][str(OTHER_PARTNER)]["peakConcurrent"] == 1
    assert stats["calls"][COMPLETED]["throttled"] == 3
    assert stats["calls"][COMPLETED]["limit429"] == 3
    # Switched off at run time: nothing is refused any more.
    await emulator.admin("POST", "/admin/service", {"maxConcurrent": 0, "latency": 0})
    results = await asyncio.gather(*(timed_call(emulator, listing()) for _ in range(6)))
    assert {status for _e, status, _a in results} == {200}


async def test_the_429_503_mix_is_seeded(emulator: Emulator) -> None:
    async def refusals() -> list[int]:
        await emulator.admin(
            "POST",
            "/admin/service",
            {"latency": 0.2, "maxConcurrent": 1, "throttle503Share": 0.5, "seed": 42},
        )
        results = await asyncio.gather(*(timed_call(emulator, listing()) for _ in range(25)))
        return [status for _e, status, _a in results if status != 200]

    first, second = await refusals(), await refusals()
    assert len(first) == 24 and first == second
    assert set(first) == {429, 503}


async def test_a_departed_client_frees_its_slot(emulator: Emulator) -> None:
    await emulator.admin("POST", "/admin/service", {"latency": 30, "maxConcurrent": 1})
    with pytest.raises(asyncio.TimeoutError):
        await emulator.http.post(
            emulator.url(SERVICE + COMPLETED),
            json=listing(),
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    for _ in range(1500):  # up to 30 s: on a loaded machine the emulator notices late
        stats = await emulator.admin("GET", "/admin/stats")
        if stats["partners"][str(PARTNER_ID)]["inFlight"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["partners"][str(PARTNER_ID)]["inFlight"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"latency": -1},
        {"latency": "fast"},
        {"maxConcurrent": -1},
        {"maxConcurrent": 1.5},
        {"throttle503Share": 2},
        {"speed": 3},
    ],
)
async def test_service_settings_refuse_nonsense(emulator: Emulator, bad: dict[str, Any]) -> None:
    status, answer = await emulator.admin_status("POST", "/admin/service", bad)
    assert status == 400 and "error" in answer
    assert (await emulator.admin("GET", "/admin/service"))["maxConcurrent"] == 0


async def test_live_traffic_can_be_started_and_stopped(emulator: Emulator) -> None:
    assert await emulator.admin("GET", "/admin/live") == {"rate": 0.0}
    assert await emulator.admin("POST", "/admin/live", {"rate": 60}) == {"rate": 60.0}
    await emulator.admin("POST", "/admin/clock", {"advance": 600})
    made = len((await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"])
    assert 400 < made < 800  # about one a second for ten minutes
    await emulator.admin("POST", "/admin/live", {"rate": 0})
    await emulator.admin("POST", "/admin/clock", {"advance": 600})
    after = len((await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"])
    assert after == made
    status, _answer = await emulator.admin_status("POST", "/admin/live", {"rate": -1})
    assert status == 400


def test_command_line_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--latency", "400ms",
            "--latency-per-record", "0.1ms",
            "--max-concurrent", "4",
            "--throttle-503-share", "0.25",
            "--throttle-retry-after", "2s",
            "--seed", "3",
        ]
    )  # fmt: skip
    behaviour = build_state(args).behaviour
    assert behaviour.to_json() == {
        "latency": 0.4,
        "latencyPerRecord": pytest.approx(0.0001),
        "maxConcurrent": 4,
        "throttle503Share": 0.25,
        "retryAfter": 2.0,
    }
    assert "--max-concurrent" in parser.format_help()
    assert "--latency-per-record" in parser.format_help()
    for bad in (["--max-concurrent", "-1"], ["--latency", "slow"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(ValueError, match="503"):
        build_state(parser.parse_args(["--throttle-503-share", "1.5"]))


def test_behaviour_defaults_are_off() -> None:
    behaviour = ServiceBehaviour()
    assert behaviour.delay_for(1000) == 0
    assert all(behaviour.admit("1") for _ in range(1000))
