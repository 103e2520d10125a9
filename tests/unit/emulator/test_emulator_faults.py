"""Each fault kind, as a client sees it."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from emulator_testkit import API_KEY, PARTNER_ID, SERVICE, T0, Emulator, iso, records

from poller.emulator.app import create_app
from poller.emulator.faults import FaultSpec
from poller.emulator.state import EmulatorState

COMPLETED = "PartnerCompletedSessions"
WINDOW = {"startRange": iso(T0 - timedelta(hours=3)), "endRange": iso(T0)}
LISTING = {"partnerId": PARTNER_ID, "apiKey": API_KEY, **WINDOW, "sessionKey": "", "nextId": 0}


async def with_sessions(emulator: Emulator, count: int = 5) -> list[int]:
    """``count`` completed sessions inside WINDOW."""
    starts = [T0 - timedelta(hours=2) + timedelta(minutes=i) for i in range(count)]
    return await emulator.add_sessions(
        *({"startTime": iso(s), "endTime": iso(s + timedelta(seconds=40))} for s in starts)
    )


async def plan(emulator: Emulator, *calls: dict[str, Any], rate: Any = None) -> Any:
    body: dict[str, Any] = {"calls": list(calls)}
    if rate is not None:
        body["rate"] = rate
    return await emulator.admin("POST", "/admin/faults", body)


async def completed_call(emulator: Emulator, **extra: Any) -> aiohttp.ClientResponse:
    return await emulator.raw_call(COMPLETED, {**LISTING, "nResults": 100, **extra})


async def test_error500_is_an_aspnet_fault_and_only_for_the_planned_calls(
    emulator: Emulator,
) -> None:
    await plan(emulator, {"kind": "error500", "operation": COMPLETED, "count": 2})
    counts = await emulator.call("PartnerSessionCounts", type="", status="C", **WINDOW)
    assert counts[0] == 200  # another operation: untouched
    for _ in range(2):
        response = await completed_call(emulator)
        assert response.status == 500
        assert response.headers["jsonerror"] == "true"
        body = orjson.loads(await response.read())
        assert set(body) == {"Message", "StackTrace", "ExceptionType"}
        assert body["Message"] != "Invalid partnerId or apiKey"
        assert parsedate_to_datetime(response.headers["Date"]) == T0
    assert (await completed_call(emulator)).status == 200
    stats = (await emulator.admin("GET", "/admin/stats"))["calls"][COMPLETED]
    assert (stats["total"], stats["fault"], stats["error500"], stats["ok"]) == (3, 2, 2, 1)


async def test_error500_carries_the_message_and_exception_type_asked_for(
    emulator: Emulator,
) -> None:
    sspi = "A call to SSPI failed, see inner exception."
    kind = "System.Security.Authentication.AuthenticationException"
    await plan(emulator, {"kind": "error500", "message": sspi, "exceptionType": kind, "count": 2})
    response = await completed_call(emulator)
    body = orjson.loads(await response.read())
    assert (response.status, body["Message"], body["ExceptionType"]) == (500, sspi, kind)
    (left,) = (await emulator.admin("GET", "/admin/faults"))["calls"]
    assert (left["count"], left["exceptionType"]) == (1, kind)


@pytest.mark.parametrize(("kind", "status"), [("throttle429", 429), ("throttle503", 503)])
async def test_throttling_says_when_to_retry(emulator: Emulator, kind: str, status: int) -> None:
    await plan(
        emulator,
        {"kind": kind, "retryAfter": 7},
        {"kind": kind, "retryAfter": 30, "retryAfterForm": "date"},
    )
    first = await completed_call(emulator)
    assert (first.status, first.headers["Retry-After"]) == (status, "7")
    second = await completed_call(emulator)
    assert second.status == status
    retry_at = parsedate_to_datetime(second.headers["Retry-After"])
    assert retry_at - parsedate_to_datetime(second.headers["Date"]) == timedelta(seconds=30)
    assert retry_at == T0 + timedelta(seconds=30)  # the emulator clock, not the wall clock
    assert (await completed_call(emulator)).status == 200


async def test_slow_answers_normally_after_a_delay(emulator: Emulator) -> None:
    await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "slow", "delay": 0.3})
    started = time.perf_counter()
    response = await completed_call(emulator)
    assert time.perf_counter() - started >= 0.3
    assert response.status == 200
    assert len(records(orjson.loads(await response.read())["d"])) == 2


async def test_timeout_hangs_until_the_client_gives_up(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "timeout"})  # 300 s by default
    with pytest.raises(asyncio.TimeoutError):
        await emulator.http.post(
            emulator.url(SERVICE + COMPLETED),
            json={**LISTING, "nResults": 10},
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    # The emulator notices the client went away and stops waiting.
    for _ in range(1500):  # up to 30 s: on a loaded machine the emulator notices late
        stats = (await emulator.admin("GET", "/admin/stats"))["calls"][COMPLETED]
        if stats.get("client_gone"):
            break
        await asyncio.sleep(0.02)
    assert stats["client_gone"] == 1
    assert (await completed_call(emulator)).status == 200


async def test_a_hang_notices_a_departed_client_without_handler_cancellation(
    state: EmulatorState,
) -> None:
    """aiohttp only cancels handlers of lost connections when asked to: the hang must not rely
    on it (a runner set up by someone else may not ask)."""
    state.faults.add(FaultSpec(kind="timeout", delay=30))
    runner = web.AppRunner(create_app(state), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(asyncio.TimeoutError):
                await http.post(
                    f"http://127.0.0.1:{port}{SERVICE}{COMPLETED}",
                    json={**LISTING, "nResults": 10},
                    timeout=aiohttp.ClientTimeout(total=0.2),
                )
        for _ in range(1500):  # up to 30 s: on a loaded machine the emulator notices late
            if state.stats.snapshot()["calls"].get(COMPLETED, {}).get("client_gone"):
                break
            await asyncio.sleep(0.02)
        assert state.stats.snapshot()["calls"][COMPLETED]["client_gone"] == 1
    finally:
        await runner.cleanup()


async def test_reset_aborts_the_connection(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "reset"})
    with pytest.raises(aiohttp.ClientConnectionError):
        await completed_call(emulator)
    assert (await completed_call(emulator)).status == 200


async def test_truncate_cuts_the_body_short_of_its_length(emulator: Emulator) -> None:
    await with_sessions(emulator, 3)
    await plan(emulator, {"kind": "truncate"})
    async with emulator.http.post(
        emulator.url(SERVICE + COMPLETED), json={**LISTING, "nResults": 10}
    ) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 100
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert (await completed_call(emulator)).status == 200


async def test_invalid_json_is_a_200_that_does_not_parse(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "invalid_json"})
    response = await completed_call(emulator)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await response.read())


async def test_bad_shapes_take_turns(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "bad_shape", "count": 4})
    bodies = []
    for _ in range(4):
        response = await completed_call(emulator)
        assert response.status == 200
        bodies.append(orjson.loads(await response.read()))
    assert bodies[0] == {"d": "oops"}
    assert bodies[1]["d"]["users"] == 5
    assert bodies[2] == {"d": None}
    assert "d" not in bodies[3]


async def test_record_mutations_damage_the_served_copy_only(emulator: Emulator) -> None:
    ids = await with_sessions(emulator, 3)
    before = await emulator.admin("GET", "/admin/sessions")
    await plan(
        emulator,
        *(
            {"kind": kind}
            for kind in ("missing_id", "mistyped", "unknown_status", "extra_field", "null_location")
        ),
    )
    response = await completed_call(emulator)
    first, second, third = records(orjson.loads(await response.read())["d"])
    assert "id" not in first
    assert (first["duration"], first["width"], first["status"]) == ("abc", "wide", "Z")
    assert "emulatorExtra" in first and "emulatorGuestExtra" in first["guests"][0]
    assert {g["location"] for g in first["guests"]} == {None}
    # Only the first record of the page, unless asked for "all".
    assert [second["id"], third["id"]] == ids[1:]
    assert second["status"] == "C"
    assert await emulator.admin("GET", "/admin/sessions") == before
    # One call each: the next answer is clean.
    clean = records(orjson.loads(await (await completed_call(emulator)).read())["d"])
    assert [r["id"] for r in clean] == ids
    stats = (await emulator.admin("GET", "/admin/stats"))["calls"][COMPLETED]
    assert stats["mutated"] == 1 and stats["missing_id"] == 1


async def test_a_mutation_can_follow_a_session_every_time_it_is_served(emulator: Emulator) -> None:
    ids = await with_sessions(emulator, 3)
    await plan(emulator, {"kind": "bad_start_time", "sessionIds": [ids[1]]})
    for _ in range(2):
        served = records(orjson.loads(await (await completed_call(emulator)).read())["d"])
        assert [r["startTime"] == "2020-02-30T25:61:00Z" for r in served] == [False, True, False]
    described = await emulator.admin("GET", "/admin/faults")
    assert described["calls"] == [
        {"kind": "bad_start_time", "operation": "*", "sessionIds": [ids[1]]}
    ]
    await emulator.admin("DELETE", "/admin/faults")
    served = records(orjson.loads(await (await completed_call(emulator)).read())["d"])
    assert all(r["startTime"] != "2020-02-30T25:61:00Z" for r in served)


async def test_ms_dates_for_one_response(emulator: Emulator) -> None:
    await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "ms_dates"})
    text = await (await completed_call(emulator)).read()
    assert text.count(b'"startTime":"\\/Date(') >= 2 + 2 * 2  # records and their guests
    again = await (await completed_call(emulator)).read()
    assert b"/Date(" not in again


async def test_mutations_for_all_records(emulator: Emulator) -> None:
    await with_sessions(emulator, 3)
    await plan(emulator, {"kind": "mutation", "mutation": "unknown_status", "records": "all"})
    served = records(orjson.loads(await (await completed_call(emulator)).read())["d"])
    assert {r["status"] for r in served} == {"Z"}


async def test_rate_faults_are_seeded(emulator: Emulator) -> None:
    async def outcomes() -> list[int]:
        await emulator.admin("DELETE", "/admin/faults")
        await plan(emulator, rate={"p": 0.5, "kinds": ["error500", "throttle503"], "seed": 11})
        return [(await completed_call(emulator)).status for _ in range(40)]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert set(first) == {200, 500, 503}
    await emulator.admin("DELETE", "/admin/faults")
    assert (await emulator.admin("GET", "/admin/faults")) == {"calls": [], "rate": None}


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "explode"},
        {"kind": "error500", "count": 0},
        {"kind": "error500", "sessionIds": [1]},
        {"kind": "throttle429", "retryAfterForm": "fortnight"},
        {"kind": "slow", "delay": -1},
    ],
)
async def test_the_plan_refuses_nonsense(emulator: Emulator, bad: dict[str, Any]) -> None:
    status, answer = await emulator.admin_status("POST", "/admin/faults", {"calls": [bad]})
    assert status == 400 and "error" in answer
    assert (await emulator.admin("GET", "/admin/faults"))["calls"] == []
