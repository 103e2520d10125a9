"""The four operations over real HTTP, as the poller will see them."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pytest
from emulator_testkit import (
    API_KEY,
    PARTNER_ID,
    SERVICE,
    T0,
    Emulator,
    iso,
    records,
    session_ids,
)

from poller.emulator.dataset import SEED_SAMPLE_PATH

HOUR = timedelta(hours=1)


async def load_seed_sample(emulator: Emulator) -> Any:
    raw = SEED_SAMPLE_PATH.read_bytes()
    answer = await emulator.admin("POST", f"/admin/dataset?partnerId={PARTNER_ID}", data=raw)
    assert answer == {"loaded": 2}
    return orjson.loads(raw)


async def test_the_seed_sample_is_served_back_field_for_field(emulator: Emulator) -> None:
    sample = await load_seed_sample(emulator)
    response = await emulator.raw_call(
        "PartnerCompletedSessions",
        {
            "partnerId": PARTNER_ID,
            "apiKey": API_KEY,
            "startRange": "2020-02-12T00:00:00Z",
            "endRange": "2020-02-14T00:00:00Z",
            "sessionKey": "",
            "nResults": 10,
            "nextId": 0,
        },
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    served = orjson.loads(await response.read())
    expected = sample["d"]
    assert served["d"]["nextId"] == 0  # the sample's 123456789 pointed at more data
    served["d"]["nextId"] = expected["nextId"]
    assert served == sample
    # Same field order too, not only the same values.
    assert orjson.dumps(served) == orjson.dumps(sample)


async def test_a_wrong_key_or_partner_is_an_authentication_fault(emulator: Emulator) -> None:
    for credentials in ({"apiKey": "wrong"}, {"partnerId": 999}):
        response = await emulator.raw_call(
            "PartnerCompletedSessions",
            {
                "partnerId": PARTNER_ID,
                "apiKey": API_KEY,
                "startRange": iso(T0 - HOUR),
                "endRange": iso(T0),
                "sessionKey": "",
                "nResults": 10,
                "nextId": 0,
                **credentials,
            },
        )
        assert response.status == 500
        assert response.headers["jsonerror"] == "true"
        assert orjson.loads(await response.read()) == {
            "Message": "Invalid partnerId or apiKey",
            "StackTrace": "",
            "ExceptionType": "System.Security.Authentication.AuthenticationException",
        }
    stats = await emulator.admin("GET", "/admin/stats")
    assert stats["calls"]["PartnerCompletedSessions"]["auth"] == 2


async def test_an_unknown_operation_is_an_unknown_web_method(emulator: Emulator) -> None:
    status, body = await emulator.call("PartnerSessionsThatDoNotExist")
    assert status == 500
    assert body["Message"] == "Unknown web method PartnerSessionsThatDoNotExist."
    assert body["ExceptionType"] == "System.ArgumentException"


@pytest.mark.parametrize(
    ("params", "exception_type", "message"),
    [
        ({"apiKey": None}, None, "Invalid partnerId or apiKey"),
        ({"nResults": "ten"}, "System.FormatException", "not a valid value for Int32"),
        ({"nextId": [1]}, "System.InvalidOperationException", "Cannot convert"),
        ({"startRange": "tomorrow"}, "System.FormatException", "valid DateTime"),
        ({"endRange": 20240101}, "System.InvalidOperationException", "Cannot convert"),
        ({"sessionKey": 12}, "System.InvalidOperationException", "Cannot convert"),
    ],
)
async def test_ill_typed_parameters_are_faults(
    emulator: Emulator, params: dict[str, Any], exception_type: str | None, message: str
) -> None:
    status, body = await emulator.call(
        "PartnerCompletedSessions",
        **{
            "startRange": iso(T0 - HOUR),
            "endRange": iso(T0),
            "sessionKey": "",
            "nResults": 10,
            "nextId": 0,
            **params,
        },
    )
    assert status == 500
    assert message in body["Message"]
    if exception_type:
        assert body["ExceptionType"] == exception_type


async def test_every_parameter_must_be_present(emulator: Emulator) -> None:
    status, body = await emulator.call(
        "PartnerCompletedSessions", startRange=iso(T0 - HOUR), endRange=iso(T0), nextId=0
    )
    assert status == 500
    assert body["Message"] == "Invalid web service call, missing value for parameter: 'sessionKey'."
    assert body["ExceptionType"] == "System.InvalidOperationException"
    # The counts need "type" even though "" means all types.
    status, body = await emulator.call(
        "PartnerSessionCounts", status="C", startRange=iso(T0 - HOUR), endRange=iso(T0)
    )
    assert status == 500
    assert "'type'" in body["Message"]


async def test_numbers_may_arrive_as_numeric_strings(emulator: Emulator) -> None:
    status, body = await emulator.call(
        "PartnerCompletedSessions",
        partnerId=str(PARTNER_ID),
        startRange=iso(T0 - HOUR),
        endRange=iso(T0),
        sessionKey="",
        nResults="10",
        nextId="0",
    )
    assert status == 200, body


async def test_ranges_are_at_most_31_days(emulator: Emulator) -> None:
    start = T0 - timedelta(days=40)
    ok = await emulator.completed(iso(start), iso(start + timedelta(days=31)))
    assert ok["users"] == []
    for operation, extra in [
        ("PartnerCompletedSessions", {"sessionKey": "", "nResults": 10, "nextId": 0}),
        ("PartnerActiveSessions", {"sessionKey": "", "nResults": 10, "nextId": 0}),
        ("PartnerSessionCounts", {"type": "", "status": "C"}),
        ("PartnerSessionCountsEnding", {"type": "", "status": "C"}),
    ]:
        status, body = await emulator.call(
            operation,
            startRange=iso(start),
            endRange=iso(start + timedelta(days=31, seconds=1)),
            **extra,
        )
        assert status == 500, operation
        assert "31 days" in body["Message"]
        assert body["ExceptionType"] == "System.ArgumentException"
    status, body = await emulator.call(
        "PartnerCompletedSessions",
        startRange=iso(T0),
        endRange=iso(T0 - HOUR),
        sessionKey="",
        nResults=10,
        nextId=0,
    )
    assert status == 500


async def add_traffic(emulator: Emulator, count: int, **extra: Any) -> dict[str, Any]:
    body = {
        "partnerId": PARTNER_ID,
        "count": count,
        "from": iso(T0 - 10 * HOUR),
        "until": iso(T0 - 9 * HOUR),
        "maxDuration": 3600,
        "seed": 3,
        **extra,
    }
    answer: dict[str, Any] = await emulator.admin("POST", "/admin/traffic", body)
    return answer


async def test_paging_walks_every_session_once_in_id_order(emulator: Emulator) -> None:
    created = await add_traffic(emulator, 2500)
    assert created["created"] == 2500
    expected = list(range(created["firstId"], created["lastId"] + 1))
    served: list[int] = []
    next_id, pages = 0, 0
    while True:
        # Asking for more than the maximum gets the maximum.
        d = await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), nResults=5000, nextId=next_id)
        page = sorted(session_ids(d))
        assert len(page) <= 1000
        served.extend(page)
        pages += 1
        if d["nextId"] == 0:
            break
        assert d["nextId"] > page[-1]
        next_id = d["nextId"]
    assert pages == 3
    assert served == expected
    # A small page: the first n ids, and nextId is the next one.
    d = await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), nResults=10, nextId=expected[5])
    assert sorted(session_ids(d)) == expected[5:15]
    assert d["nextId"] == expected[15]
    d = await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), nResults=0)
    assert len(session_ids(d)) == 1


async def test_sessions_are_grouped_by_user_in_order_of_first_appearance(
    emulator: Emulator,
) -> None:
    await add_traffic(emulator, 200)
    d = await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), nResults=50)
    users = [(u["userName"], u["partnerUserId"]) for u in d["users"]]
    assert len(users) == len(set(users)) > 1
    firsts = [u["sessions"][0]["id"] for u in d["users"]]
    assert firsts == sorted(firsts)
    for user in d["users"]:
        assert user["__type"] == "ActivityService+userSessions"
        assert (user["validUser"], user["invalidReason"]) == (True, None)
        assert {s["__type"] for s in user["sessions"]} == {"ActivityService+session"}
    assert d["__type"] == "ActivityService+groupSessions"


async def test_type_and_key_filters(emulator: Emulator) -> None:
    await add_traffic(emulator, 300)
    everything = records(await emulator.completed(iso(T0 - 11 * HOUR), iso(T0)))
    videos = records(await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), type="V"))
    assert videos and {r["type"] for r in videos} == {"V"}
    assert len(videos) == sum(r["type"] == "V" for r in everything)
    one = everything[17]
    found = records(await emulator.completed(iso(T0 - 11 * HOUR), iso(T0), sessionKey=one["key"]))
    assert one in found and {r["key"] for r in found} == {one["key"]}


async def test_a_session_is_invisible_until_it_ends(emulator: Emulator) -> None:
    """The pessimistic model: listed by start time, and only once ended."""
    start, end = T0 - 5 * HOUR, T0 + HOUR
    [session_id] = await emulator.add_sessions({"startTime": iso(start), "endTime": iso(end)})
    window = (iso(start), iso(start + timedelta(minutes=5)))
    assert session_ids(await emulator.completed(*window)) == []
    active = records(await emulator.active(*window))
    assert [r["id"] for r in active] == [session_id]
    assert active[0]["status"] in {"J", "W", "A", "L"} and active[0]["duration"] == 0
    await emulator.admin("POST", "/admin/clock", {"advance": 3599})
    assert session_ids(await emulator.completed(*window)) == []
    await emulator.admin("POST", "/admin/clock", {"advance": 1})
    [record] = records(await emulator.completed(*window))
    assert (record["id"], record["status"], record["duration"]) == (session_id, "C", 6 * 3600)
    assert session_ids(await emulator.active(*window)) == []


async def test_the_start_range_is_half_open(emulator: Emulator) -> None:
    start = T0 - 2 * HOUR
    [session_id] = await emulator.add_sessions(
        {"startTime": iso(start), "endTime": iso(start + timedelta(seconds=30))}
    )
    assert session_ids(await emulator.completed(iso(start), iso(start + HOUR))) == [session_id]
    assert session_ids(await emulator.completed(iso(start - HOUR), iso(start))) == []
    # startRange and endRange in other notations for the same instants.
    eastern = (start - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%S")  # EDT, no zone
    offset = (start - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S") + "-5:00"
    for notation in (eastern, offset):
        assert session_ids(await emulator.completed(notation, iso(start + HOUR))) == [session_id]
        assert session_ids(await emulator.completed(iso(start - HOUR), notation)) == []
    # A bare date: midnight Eastern (04:00Z in March after the DST switch).
    day = (start - timedelta(hours=4)).strftime("%Y-%m-%d")
    assert session_ids(await emulator.completed(day, iso(start + HOUR))) == [session_id]


async def test_dates_can_be_served_the_asmx_way(emulator: Emulator) -> None:
    await load_seed_sample(emulator)
    emulator.state.date_format = "ms"
    response = await emulator.raw_call(
        "PartnerCompletedSessions",
        {
            "partnerId": PARTNER_ID,
            "apiKey": API_KEY,
            "startRange": "2020-02-12T00:00:00Z",
            "endRange": "2020-02-14T00:00:00Z",
            "sessionKey": "",
            "nResults": 10,
            "nextId": 0,
        },
    )
    text = await response.read()
    assert b'"startTime":"\\/Date(1581507672000)\\/"' in text
    first = orjson.loads(text)["d"]["users"][0]["sessions"][0]
    assert first["startTime"] == "/Date(1581507672000)/"
    assert first["guests"][0]["startTime"] == "/Date(1581507674000)/"


async def test_counts_agree_with_the_sessions(emulator: Emulator) -> None:
    await add_traffic(emulator, 400, until=iso(T0 - HOUR), maxDuration=4 * 3600)
    window = (iso(T0 - 10 * HOUR), iso(T0 - HOUR))
    listed = await emulator.admin("GET", f"/admin/sessions?partnerId={PARTNER_ID}")
    sessions = listed["sessions"]
    ended = [s for s in sessions if s["ended"]]
    active = [s for s in sessions if not s["ended"]]
    assert ended and active

    def tally(chosen: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
        rows: dict[tuple[str, str], list[int]] = {}
        for s in chosen:
            row = rows.setdefault((s["type"], s["status"]), [0, 0])
            row[0] += 1
            row[1] += s["record"]["duration"]
        return {k: (n, round(total / n)) for k, (n, total) in rows.items()}

    for status, chosen in (("C", ended), ("A", active)):
        code, body = await emulator.call(
            "PartnerSessionCounts",
            type="",
            status=status,
            startRange=window[0],
            endRange=window[1],
        )
        assert code == 200, body
        rows = {(r["type"], r["status"]): (r["count"], r["averageDuration"]) for r in body["d"]}
        assert rows == tally(chosen)
        assert all(r["__type"] == "ActivityService+sessionCount" for r in body["d"])
    # The completed count matches what the completed listing returns.
    code, body = await emulator.call(
        "PartnerSessionCounts", type="G", status="C", startRange=window[0], endRange=window[1]
    )
    listed_g = records(await emulator.completed(*window, type="G"))
    assert sum(r["count"] for r in body["d"]) == len(listed_g)
    assert {r["status"] for r in body["d"]} == {r["status"] for r in listed_g}


async def test_counts_ending_count_by_end_time(emulator: Emulator) -> None:
    await add_traffic(emulator, 300, until=iso(T0 - HOUR), maxDuration=4 * 3600)
    listed = (await emulator.admin("GET", "/admin/sessions?state=ended"))["sessions"]
    window_start, window_end = T0 - 8 * HOUR, T0 - 6 * HOUR
    expected: dict[tuple[str, str], int] = {}
    for s in listed:
        if iso(window_start) <= s["endTime"] < iso(window_end):
            expected[(s["type"], s["status"])] = expected.get((s["type"], s["status"]), 0) + 1
    code, body = await emulator.call(
        "PartnerSessionCountsEnding",
        type="",
        status="C",
        startRange=iso(window_start),
        endRange=iso(window_end),
    )
    assert code == 200
    assert {(r["type"], r["status"]): r["count"] for r in body["d"]} == expected
    assert expected


async def test_the_date_header_follows_the_emulator_clock(emulator: Emulator) -> None:
    async def header_date(path: str, method: str = "GET") -> Any:
        async with emulator.http.request(method, emulator.url(path), json={}) as response:
            return parsedate_to_datetime(response.headers["Date"])

    assert await header_date("/admin/health") == T0
    await emulator.admin("POST", "/admin/clock", {"set": "2020-02-12T11:41:12Z"})
    assert await header_date("/admin/health") == T0.replace(2020, 2, 12, 11, 41, 12)
    # Faults too (here, an unknown method and an authentication fault).
    assert await header_date(SERVICE + "Nope", "POST") == T0.replace(2020, 2, 12, 11, 41, 12)
    await emulator.admin("POST", "/admin/clock", {"advance": 3600})
    assert await header_date(SERVICE + "PartnerSessionCounts", "POST") == T0.replace(
        2020, 2, 12, 12, 41, 12
    )


async def test_active_listing_shows_only_running_sessions(emulator: Emulator) -> None:
    await add_traffic(emulator, 200, until=iso(T0), maxDuration=6 * 3600)
    active = records(await emulator.active(iso(T0 - 11 * HOUR), iso(T0)))
    assert active
    assert {r["status"] for r in active} <= {"J", "W", "A", "L"}
    assert {r["duration"] for r in active} == {0}
    assert all(g["duration"] == 0 for r in active for g in r["guests"] if g["status"] == "A")
    ended = session_ids(await emulator.completed(iso(T0 - 11 * HOUR), iso(T0)))
    assert not set(ended) & {r["id"] for r in active}
