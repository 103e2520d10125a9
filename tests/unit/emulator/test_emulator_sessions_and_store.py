"""The visibility model of one session, and the store's indexes."""

from __future__ import annotations

import itertools

from poller.emulator.sessions import GuestSpec, Session, SessionSpec, build_session
from poller.emulator.store import PartnerSessions, SessionStore

START = 1_710_504_000  # 2024-03-15T12:00:00Z


def make(
    session_id: int,
    start: int = START,
    end: int | None = START + 600,
    *,
    partner_id: int = 1,
    guests: list[GuestSpec] | None = None,
    final_status: str = "C",
) -> Session:
    return build_session(
        SessionSpec(
            partner_id=partner_id,
            id=session_id,
            user_name="agent.company.glance.net",
            partner_user_id="puid",
            type="C",
            start=start,
            end=end,
            final_status=final_status,
            key="1111",
            width=0,
            height=0,
            kbytes=30,
            is_reverse=False,
            guests=guests
            if guests is not None
            else [
                GuestSpec(type="visitor", joined=start - 5, kbytes=30, ip="1.2.3.4"),
                GuestSpec(type="agent", joined=start, kbytes=18, ip="1.2.3.5"),
                GuestSpec(
                    type="agent", joined=start + 60, left=start + 120, final_status="X", kbytes=1
                ),
            ],
        )
    )


def test_ended_record_has_the_seed_field_order() -> None:
    session = make(1)
    assert list(session.record) == [
        "__type", "id", "type", "status", "startTime", "key", "width", "height", "duration",
        "kbytes", "isReverse", "guests",
    ]  # fmt: skip
    assert list(session.record["guests"][0]) == [
        "type", "status", "startTime", "duration", "kbytes", "ip", "location", "name", "email",
        "phone",
    ]  # fmt: skip


def test_a_session_is_active_until_its_end_then_ended() -> None:
    session = make(1)
    assert not session.has_started(START - 1)
    assert session.status_at(START) == "J"  # being set up
    active = session.render(START + 30)
    assert active["status"] == "A"
    assert active["duration"] == 0
    # Only the guests who have joined, present ones at duration 0.
    assert [g["type"] for g in active["guests"]] == ["visitor", "agent"]
    assert {g["status"] for g in active["guests"]} == {"A"}
    assert {g["duration"] for g in active["guests"]} == {0}
    # The third guest joined at +60 and left at +120: gone, with its own final status.
    later = session.render(START + 300)
    shown = [(g["status"], g["duration"]) for g in later["guests"]]
    assert shown == [("A", 0), ("A", 0), ("X", 60)]
    assert not session.has_ended(START + 599)
    ended = session.render(START + 600)
    assert ended["status"] == "C"
    assert ended["duration"] == 600
    assert [(g["status"], g["duration"]) for g in ended["guests"]] == [
        ("C", 605),
        ("C", 600),
        ("X", 60),
    ]


def test_waiting_until_someone_joins() -> None:
    session = make(1, guests=[GuestSpec(type="host", joined=START)], final_status="T")
    assert session.status_at(START + 60) == "W"
    assert session.render(START + 1000)["status"] == "T"


def test_rendering_never_changes_the_stored_record() -> None:
    session = make(1)
    before = repr(session.record)
    session.render(START + 30)
    session.render(START + 30, ms_dates=True)
    session.render(START + 900, ms_dates=True)
    assert repr(session.record) == before
    assert session.render(START + 900)["startTime"] == "2024-03-15T12:00:00Z"
    assert session.render(START + 900, ms_dates=True)["startTime"] == "/Date(1710504000000)/"


def test_an_open_ended_session_finishes_when_told() -> None:
    session = make(1, end=None)
    assert not session.has_ended(START + 10**7)
    store = PartnerSessions(1)
    store.add([session])
    assert list(store.ending_in(0, 2**40)) == []
    store.finish(session, START + 100, "X")
    assert session.has_ended(START + 100)
    record = session.render(START + 100)
    assert (record["status"], record["duration"]) == ("X", 100)
    assert [g["status"] for g in record["guests"]] == ["X", "X", "X"]
    assert list(store.ending_in(START + 100, START + 101)) == [session]


def test_ending_early_settles_every_guest() -> None:
    late_guest = GuestSpec(type="agent", joined=START + 400, kbytes=1)
    session = make(1, guests=[GuestSpec(type="visitor", joined=START), late_guest])
    store = PartnerSessions(1)
    store.add([session])
    store.finish(session, START + 200, "C")
    record = session.render(START + 200)
    assert [(g["type"], g["duration"]) for g in record["guests"]] == [("visitor", 200)]
    assert record["duration"] == 200


def accept_all(_session: Session) -> bool:
    return True


def walk(store: PartnerSessions, start_from: float, start_before: float, limit: int) -> list[int]:
    """Follow the nextId chain; the ids in the order served."""
    seen: list[int] = []
    next_id = 0
    while True:
        page, next_id = store.page(start_from, start_before, next_id, limit, accept_all)
        seen.extend(s.id for s in page)
        if next_id == 0:
            return seen


def test_pages_follow_ids_when_ids_follow_starts() -> None:
    store = PartnerSessions(1)
    store.add(make(100 + i, START + i * 10) for i in range(50))
    assert walk(store, START, START + 500, 7) == list(range(100, 150))
    assert walk(store, START + 100, START + 200, 3) == list(range(110, 120))  # half-open
    page, next_id = store.page(START, START + 500, 120, 5, accept_all)
    assert [s.id for s in page] == [120, 121, 122, 123, 124]
    assert next_id == 125


def test_pages_follow_ids_when_ids_do_not_follow_starts() -> None:
    store = PartnerSessions(1)
    ids = [5, 3, 9, 1, 7, 2, 8, 6, 4, 10]
    store.add(make(session_id, START + i) for i, session_id in enumerate(ids))
    assert walk(store, START, START + 100, 3) == sorted(ids)
    assert walk(store, START + 2, START + 6, 2) == sorted(ids[2:6])
    # Adding a session invalidates the cached id order.
    store.add([make(0, START + 3)])
    assert walk(store, START, START + 100, 4) == [0, *sorted(ids)]


def test_bulk_and_single_adds_agree_and_same_id_replaces() -> None:
    one_by_one, in_bulk = PartnerSessions(1), PartnerSessions(1)
    sessions = [make(i, START + (i * 7919) % 1000) for i in range(600)]
    for session in sessions:
        one_by_one.add([session])
    in_bulk.add(sessions)
    assert walk(one_by_one, 0, 2**40, 1000) == walk(in_bulk, 0, 2**40, 1000) == list(range(600))
    in_bulk.add([make(5, START + 5000)])
    assert len(in_bulk) == 600
    assert [s.id for s in in_bulk.started_in(START + 5000, START + 5001)] == [5]


def test_store_shares_one_id_counter_and_never_reuses_ids() -> None:
    store = SessionStore(first_id=1000)
    store.add(1, [make(5000, partner_id=1)])
    assert store.allocate_id() == 5001
    store.clear()
    assert len(store) == 0
    assert store.allocate_id() == 5002
    counter = itertools.count(store.allocate_id())
    assert next(counter) == 5003
