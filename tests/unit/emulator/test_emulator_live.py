"""Live traffic through the HTTP interface: sessions start and end as the clock moves."""

from __future__ import annotations

from datetime import timedelta

from emulator_testkit import T0, Emulator, iso


async def test_live_sessions_start_and_end_as_the_clock_advances(emulator: Emulator) -> None:
    emulator.state.start_live_traffic(60, backlog_hours=1)
    before = (await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"]
    assert 3000 < len(before) < 4200  # about an hour at 60 a minute
    ended_before = {s["id"] for s in before if s["ended"]}
    assert ended_before  # a fresh poller finds completed sessions at once
    window = (iso(T0 - timedelta(hours=2)), iso(T0 + timedelta(hours=1)))
    served = await emulator.completed_ids(*window)
    assert len(served) == len(set(served)) and set(served) == ended_before

    await emulator.admin("POST", "/admin/clock", {"advance": 600})
    after = (await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"]
    assert 450 < len(after) - len(before) < 750  # ten more minutes of arrivals
    ids = [s["id"] for s in after]
    starts = [s["startTime"] for s in after]
    assert ids == sorted(ids) and starts == sorted(starts)  # ids ascend with start times
    ended_after = {s["id"] for s in after if s["ended"]}
    assert ended_before < ended_after
    # Some of the sessions that started in those ten minutes are already over.
    assert any(s["ended"] and s["startTime"] >= iso(T0) for s in after)


async def test_reset_does_not_replay_the_backlog(emulator: Emulator) -> None:
    emulator.state.start_live_traffic(60, backlog_hours=1)
    before = (await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"]
    await emulator.admin("POST", "/admin/reset")
    await emulator.admin("POST", "/admin/clock", {"advance": 60})
    after = (await emulator.admin("GET", "/admin/sessions?records=false"))["sessions"]
    assert 20 < len(after) < 110
    assert min(s["id"] for s in after) > max(s["id"] for s in before)  # ids are never reused
