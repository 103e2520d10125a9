"""Hostile answers on demand: a skewed Date, a redirect, an oversized answer, an impossible
nextId, a record with a huge guest list."""

from __future__ import annotations

import json
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pytest
from emulator_testkit import API_KEY, PARTNER_ID, SERVICE, T0, Emulator, iso, records

COMPLETED = "PartnerCompletedSessions"
COUNTS = "PartnerSessionCounts"
WINDOW = {"startRange": iso(T0 - timedelta(hours=3)), "endRange": iso(T0)}
LISTING = {"partnerId": PARTNER_ID, "apiKey": API_KEY, **WINDOW, "sessionKey": "", "nextId": 0}
YEAR = 365.25 * 86_400


async def with_sessions(emulator: Emulator, count: int) -> list[int]:
    starts = [T0 - timedelta(hours=2) + timedelta(minutes=i) for i in range(count)]
    return await emulator.add_sessions(
        *({"startTime": iso(s), "endTime": iso(s + timedelta(seconds=40))} for s in starts)
    )


async def plan(emulator: Emulator, *calls: dict[str, Any], rate: Any = None) -> Any:
    body: dict[str, Any] = {"calls": list(calls)}
    if rate is not None:
        body["rate"] = rate
    return await emulator.admin("POST", "/admin/faults", body)


async def call(
    emulator: Emulator, n: int = 100, operation: str = COMPLETED, **extra: Any
) -> tuple[int, Any, bytes]:
    params = {**LISTING, "nResults": n, **extra}
    if operation == COUNTS:
        params = {"partnerId": PARTNER_ID, "apiKey": API_KEY, **WINDOW, "type": "", "status": "C"}
    async with emulator.http.post(
        emulator.url(SERVICE + operation), json=params, allow_redirects=False
    ) as response:
        return response.status, response.headers, await response.read()


def date_of(headers: Any) -> Any:
    return parsedate_to_datetime(headers["Date"])


async def test_date_skew_by_an_offset_for_the_planned_calls_only(emulator: Emulator) -> None:
    await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "date_skew", "offset": 75 * YEAR, "count": 2})
    for operation in (COMPLETED, COUNTS):  # any operation's answer
        status, headers, body = await call(emulator, operation=operation)
        assert status == 200
        assert date_of(headers).year == T0.year + 75
    status, headers, body = await call(emulator)
    assert date_of(headers) == T0
    assert len(records(orjson.loads(body)["d"])) == 2  # the answer itself is untouched
    stats = (await emulator.admin("GET", "/admin/stats"))["calls"]
    assert stats[COMPLETED]["date_skew"] == 1 and stats[COUNTS]["date_skew"] == 1


async def test_date_skew_backwards_goes_with_another_fault(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "error500"}, {"kind": "date_skew", "offset": -3600})
    status, headers, _body = await call(emulator)
    assert status == 500
    assert date_of(headers) == T0 - timedelta(hours=1)


async def test_date_jitter_is_bounded_and_seeded(emulator: Emulator) -> None:
    async def skews() -> list[float]:
        await emulator.admin("DELETE", "/admin/faults")
        await plan(emulator, {"kind": "date_skew", "jitter": 5, "seed": 9, "count": 30})
        found = []
        for _ in range(30):
            _status, headers, _body = await call(emulator)
            found.append((date_of(headers) - T0).total_seconds())
        return found

    first, second = await skews(), await skews()
    assert first == second
    assert all(-5 <= skew <= 5 for skew in first)
    assert len(set(first)) > 3
    _status, headers, _body = await call(emulator)
    assert date_of(headers) == T0


async def test_date_jitter_by_rate_keeps_drawing(emulator: Emulator) -> None:
    await plan(emulator, rate={"p": 1.0, "kinds": ["date_skew"], "params": {"jitter": 4}})
    found = set()
    for _ in range(20):
        status, headers, _body = await call(emulator)
        assert status == 200
        found.add((date_of(headers) - T0).total_seconds())
    assert len(found) > 3 and all(-4 <= skew <= 4 for skew in found)
    described = await emulator.admin("GET", "/admin/faults")
    assert described["rate"]["params"] == {"jitter": 4}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_to_another_origin(emulator: Emulator, status: int) -> None:
    await plan(emulator, {"kind": "redirect", "status": status})
    code, headers, _body = await call(emulator)
    assert code == status
    assert headers["Location"] == "https://redirect.invalid" + SERVICE + COMPLETED
    assert (await call(emulator))[0] == 200


async def test_redirect_to_a_given_location(emulator: Emulator) -> None:
    await plan(emulator, {"kind": "redirect", "status": 307, "location": "http://127.0.0.1:9/x"})
    code, headers, _body = await call(emulator)
    assert (code, headers["Location"]) == (307, "http://127.0.0.1:9/x")
    stats = (await emulator.admin("GET", "/admin/stats"))["calls"][COMPLETED]
    assert stats["fault"] == 1 and stats["redirect"] == 1


async def test_oversized_page_serves_more_records_than_asked(emulator: Emulator) -> None:
    ids = await with_sessions(emulator, 6)
    await plan(emulator, {"kind": "oversized", "extraRecords": 3})
    _status, _headers, body = await call(emulator, n=2)
    d = orjson.loads(body)["d"]
    assert sorted(r["id"] for r in records(d)) == ids[:5]  # served grouped by user
    assert d["nextId"] == ids[5]
    # Without it, pages are as asked.
    _status, _headers, body = await call(emulator, n=2)
    assert len(records(orjson.loads(body)["d"])) == 2


async def test_oversized_page_repeats_records_when_the_range_has_too_few(
    emulator: Emulator,
) -> None:
    ids = await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "oversized", "extraRecords": 3})
    _status, _headers, body = await call(emulator, n=2)
    served = [r["id"] for r in records(orjson.loads(body)["d"])]
    assert len(served) == 5 and set(served) == set(ids)


async def test_oversized_body_is_padded_and_still_json(emulator: Emulator) -> None:
    await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "oversized", "padBytes": 3_000_000, "operation": COMPLETED})
    status, headers, body = await call(emulator)
    assert status == 200
    assert len(body) == 3_000_000 == int(headers["Content-Length"])
    assert len(records(orjson.loads(body)["d"])) == 2


@pytest.mark.parametrize(
    ("given", "served"),
    [
        (None, 2**70),
        (str(2**70 + 1), 2**70 + 1),
        (-1, -1),
        (2**63, 2**63),
    ],
)
async def test_bad_next_id(emulator: Emulator, given: Any, served: int) -> None:
    await with_sessions(emulator, 3)
    spec: dict[str, Any] = {"kind": "bad_next_id"}
    if given is not None:
        spec["nextId"] = given
    described = await plan(emulator, spec)
    assert described["calls"][0]["nextId"] == str(served)
    _status, _headers, body = await call(emulator, n=1)
    assert f'"nextId":{served},'.encode() in body
    d = json.loads(body)["d"]  # the standard library reads integers of any size
    assert d["nextId"] == served and len(records(d)) == 1
    # A counts call cannot carry it: the fault waits for a listing.
    assert (await call(emulator, operation=COUNTS))[0] == 200
    _status, _headers, body = await call(emulator, n=1)
    assert orjson.loads(body)["d"]["nextId"] != served


async def test_huge_guest_list_makes_a_record_beyond_kafkas_default_limit(
    emulator: Emulator,
) -> None:
    ids = await with_sessions(emulator, 3)
    before = await emulator.admin("GET", "/admin/sessions")
    await plan(emulator, {"kind": "huge_guests", "sessionIds": [ids[1]]})
    for _ in range(2):  # every time that session is served
        _status, _headers, body = await call(emulator)
        first, second, third = records(orjson.loads(body)["d"])
        assert len(second["guests"]) == 10_000
        assert len(orjson.dumps(second)) > 1_048_576
        assert second["id"] == ids[1] and second["status"] == "C"
        assert len(first["guests"]) < 10 and len(third["guests"]) < 10
    assert await emulator.admin("GET", "/admin/sessions") == before


async def test_huge_guest_list_of_a_chosen_size_for_one_call(emulator: Emulator) -> None:
    await with_sessions(emulator, 2)
    await plan(emulator, {"kind": "huge_guests", "guests": 50})
    _status, _headers, body = await call(emulator)
    first, second = records(orjson.loads(body)["d"])
    assert len(first["guests"]) == 50 and len(second["guests"]) < 10


async def test_a_real_session_with_ten_thousand_guests(emulator: Emulator) -> None:
    """The admin API can also hold such a session (so its listing shows it)."""
    start = T0 - timedelta(hours=1)
    guests = [{"type": "guest", "name": f"Guest {i}"} for i in range(10_000)]
    (session_id,) = await emulator.add_sessions(
        {"startTime": iso(start), "endTime": iso(start + timedelta(minutes=5)), "guests": guests}
    )
    _status, _headers, body = await call(emulator)
    (record,) = records(orjson.loads(body)["d"])
    assert record["id"] == session_id and len(record["guests"]) == 10_000
    assert len(orjson.dumps(record)) > 1_048_576


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "redirect", "status": 303},
        {"kind": "oversized"},
        {"kind": "oversized", "padBytes": -1},
        {"kind": "bad_next_id", "nextId": "many"},
        {"kind": "bad_next_id", "nextId": 1.5},
        {"kind": "date_skew", "offset": 1e12},
        {"kind": "date_skew", "jitter": -1},
        {"kind": "huge_guests", "guests": -5},
    ],
)
async def test_hostile_faults_refuse_nonsense(emulator: Emulator, bad: dict[str, Any]) -> None:
    status, answer = await emulator.admin_status("POST", "/admin/faults", {"calls": [bad]})
    assert status == 400 and "error" in answer


async def test_rate_params_are_checked(emulator: Emulator) -> None:
    rate = {"p": 0.5, "kinds": ["redirect"], "params": {"status": 1}}
    status, _answer = await emulator.admin_status("POST", "/admin/faults", {"rate": rate})
    assert status == 400
