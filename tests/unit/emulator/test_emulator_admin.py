"""The admin API that tests, demos and benchmarks drive the emulator with."""

from __future__ import annotations

from datetime import timedelta

from emulator_testkit import PARTNER_ID, SERVICE, T0, Emulator, iso, records

from poller.emulator.dataset import SEED_SAMPLE_PATH

HOUR = timedelta(hours=1)


async def test_health_and_clock(emulator: Emulator) -> None:
    assert await emulator.admin("GET", "/admin/health") == {"ok": True}
    assert await emulator.admin("GET", "/admin/clock") == {
        "now": "2024-03-15T12:00:00Z",
        "speed": 0,
    }
    moved = await emulator.admin("POST", "/admin/clock", {"advance": 90})
    assert moved["now"] == "2024-03-15T12:01:30Z"
    moved = await emulator.admin("POST", "/admin/clock", {"set": "2024-01-01T00:00:00Z"})
    assert moved["now"] == "2024-01-01T00:00:00Z"
    assert (await emulator.admin("POST", "/admin/clock", {"speed": 2.5}))["speed"] == 2.5
    for bad in ({}, {"speed": -1}, {"set": "soon"}, {"advance": "a lot"}):
        status, answer = await emulator.admin_status("POST", "/admin/clock", bad)
        assert status == 400 and "error" in answer


async def test_sessions_listing_by_state(emulator: Emulator) -> None:
    ended_id, running_id, open_id = await emulator.add_sessions(
        {"startTime": iso(T0 - HOUR), "endTime": iso(T0 - HOUR / 2), "status": "X"},
        {"startTime": iso(T0 - HOUR), "endTime": iso(T0 + HOUR)},
        {"startTime": iso(T0 - HOUR), "endTime": None, "type": "G", "userName": "me"},
    )
    listed = await emulator.admin("GET", "/admin/sessions")
    assert listed["now"] == "2024-03-15T12:00:00Z"
    by_id = {s["id"]: s for s in listed["sessions"]}
    assert list(by_id) == sorted(by_id)
    ended = by_id[ended_id]
    assert (ended["ended"], ended["status"], ended["endTime"]) == (
        True,
        "X",
        "2024-03-15T11:30:00Z",
    )
    assert ended["record"]["status"] == "X" and ended["record"]["duration"] == 1800
    assert by_id[running_id]["record"]["duration"] == 0
    assert by_id[open_id]["endTime"] is None
    assert (by_id[open_id]["type"], by_id[open_id]["userName"]) == ("G", "me")
    assert by_id[open_id]["partnerId"] == PARTNER_ID
    ended_only = await emulator.admin("GET", "/admin/sessions?state=ended")
    assert [s["id"] for s in ended_only["sessions"]] == [ended_id]
    active = await emulator.admin("GET", f"/admin/sessions?state=active&partnerId={PARTNER_ID}")
    assert [s["id"] for s in active["sessions"]] == [running_id, open_id]
    slim = await emulator.admin("GET", f"/admin/sessions?records=false&fromId={running_id}&limit=1")
    assert [s["id"] for s in slim["sessions"]] == [running_id]
    assert "record" not in slim["sessions"][0]


async def test_the_admin_record_is_what_the_operations_serve(emulator: Emulator) -> None:
    await emulator.admin("POST", "/admin/traffic", {"partnerId": PARTNER_ID, "count": 50})
    listed = await emulator.admin("GET", "/admin/sessions?state=ended")
    status, body = await emulator.call(
        "PartnerCompletedSessions",
        startRange=iso(T0 - 2 * HOUR),
        endRange=iso(T0),
        sessionKey="",
        nResults=1000,
        nextId=0,
    )
    assert status == 200
    served = sorted(records(body["d"]), key=lambda record: record["id"])
    assert served == [s["record"] for s in listed["sessions"]]
    assert len(served) > 10


async def test_added_sessions_get_realistic_defaults_and_keep_what_is_given(
    emulator: Emulator,
) -> None:
    [session_id] = await emulator.add_sessions(
        {
            "startTime": iso(T0 - HOUR),
            "endTime": iso(T0 - HOUR + timedelta(seconds=75)),
            "status": "Q",
            "key": "9900V51849",
            "customerField": {"a": 1},
            "guests": [
                {"type": "host", "name": "Greta Guest", "vendorNote": "x"},
                {"type": "guest", "status": "X", "duration": 10},
            ],
        }
    )
    [view] = (await emulator.admin("GET", "/admin/sessions"))["sessions"]
    record = view["record"]
    assert (record["id"], record["status"], record["duration"]) == (session_id, "Q", 75)
    assert (record["key"], record["customerField"]) == ("9900V51849", {"a": 1})
    host, guest = record["guests"]
    assert (host["name"], host["vendorNote"], host["status"], host["duration"]) == (
        "Greta Guest",
        "x",
        "Q",
        75,
    )
    assert (guest["status"], guest["duration"]) == ("X", 10)
    assert host["ip"] and host["startTime"] == iso(T0 - HOUR)
    [odd] = await emulator.add_sessions({"startTime": iso(T0 - HOUR), "type": "Z", "status": "Y"})
    odd_view = (await emulator.admin("GET", "/admin/sessions"))["sessions"][-1]
    assert (odd_view["id"], odd_view["type"], odd_view["status"]) == (odd, "Z", "A")
    # Chosen ids are kept; the next free id follows them.
    [chosen] = await emulator.add_sessions({"id": 90_000_000, "startTime": iso(T0 - HOUR)})
    [following] = await emulator.add_sessions({"startTime": iso(T0 - HOUR)})
    assert (chosen, following) == (90_000_000, 90_000_001)


async def test_ending_a_session_now(emulator: Emulator) -> None:
    [session_id] = await emulator.add_sessions({"startTime": iso(T0 - HOUR), "endTime": None})
    await emulator.admin("POST", "/admin/clock", {"advance": 30})
    ended = await emulator.admin("POST", f"/admin/sessions/{session_id}/end", {"status": "X"})
    assert (ended["ended"], ended["status"], ended["record"]["duration"]) == (True, "X", 3630)
    assert ended["endTime"] == "2024-03-15T12:00:30Z"
    status, _ = await emulator.admin_status("POST", f"/admin/sessions/{session_id}/end")
    assert status == 409  # already over
    status, _ = await emulator.admin_status("POST", "/admin/sessions/424242/end")
    assert status == 404
    [future] = await emulator.add_sessions({"startTime": iso(T0 + HOUR)})
    status, _ = await emulator.admin_status("POST", f"/admin/sessions/{future}/end")
    assert status == 409  # not started


async def test_loading_a_dataset_and_generating_traffic(emulator: Emulator) -> None:
    loaded = await emulator.admin(
        "POST", f"/admin/dataset?partnerId={PARTNER_ID}", data=SEED_SAMPLE_PATH.read_bytes()
    )
    assert loaded == {"loaded": 2}
    status, answer = await emulator.admin_status("POST", "/admin/dataset", {"nothing": 1})
    assert status == 400 and "data set" in answer["error"]
    created = await emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 100,
            "from": iso(T0 - 3 * HOUR),
            "until": iso(T0 - 2 * HOUR),
            "minDuration": 30,
            "maxDuration": 600,
            "users": 3,
            "seed": 1,
        },
    )
    assert created["created"] == 100
    assert created["lastId"] - created["firstId"] == 99
    assert created["firstId"] > 57125147  # after the data set's ids
    listed = (await emulator.admin("GET", "/admin/sessions"))["sessions"]
    generated = [s for s in listed if s["id"] >= created["firstId"]]
    assert len({s["userName"] for s in generated}) == 3
    assert all(s["ended"] for s in generated)  # all over by now: at most 10 minutes long
    empty = await emulator.admin("POST", "/admin/traffic", {"partnerId": PARTNER_ID, "count": 0})
    assert empty == {"created": 0, "firstId": None, "lastId": None}


async def test_partners_stats_and_reset(emulator: Emulator) -> None:
    answer = await emulator.admin("POST", "/admin/partners", {"partnerId": 777, "apiKey": "k7"})
    assert answer == {"partners": [777, PARTNER_ID]}
    status, body = await emulator.call(
        "PartnerSessionCounts",
        partnerId=777,
        apiKey="k7",
        type="",
        status="C",
        startRange=iso(T0 - HOUR),
        endRange=iso(T0),
    )
    assert (status, body) == (200, {"d": []})
    stats = await emulator.admin("GET", "/admin/stats")
    assert stats["calls"]["PartnerSessionCounts"]["ok"] == 1
    assert stats["allPartners"]["calls"] == stats["partners"]["777"]["calls"] == 1
    nothing = {"calls": 0, "admitted": 0, "throttled": 0, "inFlight": 0, "peakConcurrent": 0}
    assert await emulator.admin("POST", "/admin/stats/reset") == {
        "calls": {},
        "partners": {},
        "allPartners": nothing,
    }
    await emulator.add_sessions({"startTime": iso(T0 - HOUR)})
    await emulator.admin("POST", "/admin/faults", {"calls": [{"kind": "error500"}]})
    assert await emulator.admin("POST", "/admin/reset") == {"ok": True}
    assert (await emulator.admin("GET", "/admin/sessions"))["sessions"] == []
    assert (await emulator.admin("GET", "/admin/faults"))["calls"] == []
    assert (await emulator.admin("GET", "/admin/partners"))["partners"] == [777, PARTNER_ID]


async def test_admin_errors_are_json(emulator: Emulator) -> None:
    cases = [
        ("POST", "/admin/traffic", {"partnerId": 1, "count": 5}, 404),
        ("POST", "/admin/traffic", {"partnerId": PARTNER_ID}, 400),
        ("POST", "/admin/traffic", {"partnerId": PARTNER_ID, "count": 5, "from": "x"}, 400),
        ("POST", "/admin/sessions", {"partnerId": PARTNER_ID, "sessions": [{}]}, 400),
        (
            "POST",
            "/admin/sessions",
            {"partnerId": PARTNER_ID, "sessions": [{"startTime": iso(T0), "status": "A"}]},
            400,
        ),
        ("POST", "/admin/partners", {"partnerId": 5}, 400),
        ("GET", "/admin/sessions?state=sleeping", None, 400),
    ]
    for method, path, body, expected in cases:
        status, answer = await emulator.admin_status(method, path, body)
        assert (status, sorted(answer)) == (expected, ["error"]), (path, body)


async def test_the_service_path_only_answers_post(emulator: Emulator) -> None:
    async with emulator.http.get(emulator.url(SERVICE + "PartnerSessionCounts")) as response:
        assert response.status == 405
