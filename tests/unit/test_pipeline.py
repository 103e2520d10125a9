"""The core promise at its seam, in milliseconds: a page is committed only after every one of
its events is acknowledged; each session is emitted once across overlapping windows and
restarts; a crash between the acknowledgement and the commit re-sends, never skips; pages are
pipelined yet committed in order; dead letters are remembered once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller import metrics
from poller.cursor import Cursor
from poller.errors import PublishFailed
from poller.events import CE_TYPE_PREFIX, EventBuilder, PiiPolicy, event_id
from poller.glance.paging import Paginator
from poller.glance.records import SessionPage, SourceRecord
from poller.limiter import HeldPages
from poller.settings import TopicSettings
from poller.state import Forget, StateStore
from poller.streams.feed import Delivered, PartnerFeed, memory_key, record_id
from poller.streams.scan import Scanner
from poller.window import Window
from tests.unit.fakes import T0, MemoryPublisher, MemoryUpstream, Session

LISTING = "PartnerCompletedSessions"
COMPLETED = TopicSettings().completed
DLQ = TopicSettings().dlq
TOPICS = TopicSettings()
H = timedelta(hours=1)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
WINDOW = Window(T0 - 2 * H, T0)


def sessions(count: int, first_id: int = 1) -> list[Session]:
    return [Session(first_id + i, T0 - 2 * H + timedelta(minutes=5 * i), 60) for i in range(count)]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(tmp_path / "state.sqlite3")
    yield store
    store.close()


def scanner_for(upstream: MemoryUpstream, publisher: MemoryPublisher, state: StateStore) -> Scanner:
    builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
    feed = PartnerFeed(1, builder, publisher, state, started_enabled=False)
    return Scanner(upstream, feed, upstream.page_size, asyncio.Event())  # type: ignore[arg-type]


async def test_a_page_whose_acknowledgement_fails_is_not_committed(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(9), T0)
    publisher = MemoryPublisher()
    publisher.fail_ack_calls = {2}
    scanner = scanner_for(upstream, publisher, state)
    with pytest.raises(PublishFailed):
        await scanner.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed")
    # Page 1 (ids 1-3) acknowledged and committed; page 2 handed over, never acknowledged.
    assert state.cursor(1, "completed") == Cursor(WINDOW.start, WINDOW, 3)
    assert state.already_emitted(1, "completed", range(1, 10)) == {1, 2, 3}
    assert [e.key for e in publisher.handed[3:6]] == [b"4", b"5", b"6"]
    # The next run resumes after page 1: page 2 is sent again, nothing is skipped.
    retry = MemoryPublisher()
    outcome = await scanner_for(upstream, retry, state).scan(
        LISTING, "completed", state.cursor(1, "completed") or Cursor(T0), "completed"
    )
    assert retry.session_ids(COMPLETED) == [4, 5, 6, 7, 8, 9]
    assert outcome.cursor == Cursor(WINDOW.end) == state.cursor(1, "completed")


async def test_each_session_once_across_overlapping_windows_and_restarts(
    tmp_path: Path,
) -> None:
    upstream = MemoryUpstream(sessions(10), T0)
    publisher = MemoryPublisher()
    path = tmp_path / "state.sqlite3"
    state = StateStore.open(path)
    scanner = scanner_for(upstream, publisher, state)
    await scanner.listing(LISTING, "completed", Window(T0 - 2 * H, T0 - H))
    await scanner.listing(LISTING, "completed", WINDOW)  # overlaps the first
    state.close()
    state = StateStore.open(path)  # a restart
    try:
        outcome = await scanner_for(upstream, publisher, state).listing(
            LISTING, "completed", WINDOW
        )
    finally:
        state.close()
    assert sorted(publisher.session_ids(COMPLETED)) == list(range(1, 11))
    assert outcome.delivered.duplicates == 10 and outcome.delivered.emitted == 0


class CrashingState(StateStore):
    """A state whose next commit dies, as the process would between Kafka's acknowledgement
    and the commit."""

    crash = False

    def commit(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        if self.crash:
            raise SystemExit("killed")
        super().commit(*args, **kwargs)  # type: ignore[arg-type]


async def test_a_crash_between_acknowledgement_and_commit_resends_with_the_same_ids(
    tmp_path: Path,
) -> None:
    upstream = MemoryUpstream(sessions(3), T0)
    path = tmp_path / "state.sqlite3"
    crashing = CrashingState.open(path)
    assert isinstance(crashing, CrashingState)
    crashing.crash = True
    first = MemoryPublisher()
    with pytest.raises(SystemExit):
        await scanner_for(upstream, first, crashing).listing(LISTING, "completed", WINDOW)
    crashing.close()
    assert first.session_ids(COMPLETED) == [1, 2, 3], "acknowledged, then the crash"
    state = StateStore.open(path)
    try:
        assert state.already_emitted(1, "completed", [1, 2, 3]) == set()
        again = MemoryPublisher()
        await scanner_for(upstream, again, state).listing(LISTING, "completed", WINDOW)
    finally:
        state.close()
    assert again.session_ids(COMPLETED) == [1, 2, 3]
    ids = {dict(e.headers)["ce_id"] for e in first.acknowledged + again.acknowledged}
    assert ids == {event_id(1, i, "completed").encode() for i in (1, 2, 3)}


async def test_the_next_page_is_sent_before_the_previous_is_acknowledged_yet_commits_are_in_order(
    state: StateStore,
) -> None:
    upstream = MemoryUpstream(sessions(9), T0)
    publisher = MemoryPublisher()
    committed: list[Cursor] = []
    outcome = await scanner_for(upstream, publisher, state).scan(
        LISTING,
        "completed",
        Cursor(WINDOW.start, WINDOW),
        "completed",
        on_page=lambda delivered, after: committed.append(after),
    )
    assert committed == [
        Cursor(WINDOW.start, WINDOW, 3),
        Cursor(WINDOW.start, WINDOW, 6),
        Cursor(WINDOW.end),
    ]
    assert outcome.cursor == state.cursor(1, "completed") == Cursor(WINDOW.end)
    # Pipelined: page 2 was handed over before page 1's acknowledgement, and so on.
    assert (
        publisher.log == [("sent", 3), ("sent", 3), ("acked", 3), ("sent", 3)] + [("acked", 3)] * 2
    )


class Fetches(list[tuple[str, Window, int]]):
    """An upstream's calls, each also written into another log as it is made."""

    def __init__(self, into: list[tuple[str, int]]) -> None:
        super().__init__()
        self.into = into

    def append(self, call: tuple[str, Window, int]) -> None:
        super().append(call)
        self.into.append(("fetch", call[2]))


async def test_the_next_page_is_on_its_way_before_this_one_is_built(state: StateStore) -> None:
    # Against a service that takes half a second a page, building a page's events after the
    # next request has left is what keeps the scan upstream-bound: once Kafka is seen keeping
    # up (the first page acknowledged), the third page is asked for before the second is built.
    upstream = MemoryUpstream(sessions(9), T0)
    publisher = MemoryPublisher()
    upstream.calls = Fetches(publisher.log)
    await scanner_for(upstream, publisher, state).scan(
        LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed"
    )
    log = publisher.log
    assert [entry for entry in log if entry[0] == "fetch"] == [("fetch", t) for t in (0, 3, 6)]
    second_sent = [i for i, entry in enumerate(log) if entry == ("sent", 3)][1]
    assert log.index(("fetch", 6)) < second_sent, log
    assert state.cursor(1, "completed") == Cursor(WINDOW.end)


async def test_nothing_is_read_ahead_while_kafka_has_not_answered(state: StateStore) -> None:
    # Kafka away: the page awaiting its acknowledgements and the one sent behind it are all
    # that is held; no third page is read meanwhile.
    upstream = MemoryUpstream(sessions(12), T0)
    publisher = MemoryPublisher()
    publisher.gate.clear()
    scan = asyncio.create_task(
        scanner_for(upstream, publisher, state).scan(
            LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed"
        )
    )
    for _ in range(50):
        await asyncio.sleep(0)
    assert [token for _, _, token in upstream.calls] == [0, 3]
    assert publisher.log == [("sent", 3), ("sent", 3)]
    publisher.gate.set()
    outcome = await scan
    assert outcome.cursor == Cursor(WINDOW.end) and publisher.session_ids(COMPLETED) == list(
        range(1, 13)
    )


async def test_a_scan_cut_short_leaves_no_request_behind(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(9), T0)
    scanner, _ = scan_of(upstream, state)
    outcome = await scanner.scan(
        LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed", max_pages=1
    )
    assert outcome.pages == 1 and [token for _, _, token in upstream.calls] == [0]
    assert state.cursor(1, "completed") == Cursor(WINDOW.start, WINDOW, 3)


async def test_a_bad_record_is_dead_lettered_once(state: StateStore) -> None:
    bad = Session(5, T0 - H, 60, {"startTime": "yesterday"})
    upstream = MemoryUpstream([*sessions(3), bad], T0)
    upstream.sessions[3] = bad
    publisher = MemoryPublisher()
    scanner = scanner_for(upstream, publisher, state)
    bad_start_window = Window(T0 - 3 * H, T0 + H)
    first = await scanner.listing(LISTING, "completed", bad_start_window)
    again = await scanner.listing(LISTING, "completed", bad_start_window)
    letters = [e for e in publisher.acknowledged if e.topic == DLQ]
    assert len(letters) == 1 and first.delivered.dead_letters == 1
    assert dict(letters[0].headers)["dlq_reason"].startswith(b"startTime")
    assert again.delivered.dead_letters == 0 and again.delivered.duplicates == 4


def a_60_kb_session_between_two() -> MemoryUpstream:
    big = Session(2, T0 - H, 60, {"guests": [{"name": "x" * 1000} for _ in range(60)]})
    return MemoryUpstream([Session(1, T0 - H, 60), big, Session(3, T0 - H, 60)], T0)


async def test_a_dead_letter_fits_a_dead_letter_topic_smaller_than_the_producers_limit(
    state: StateStore,
) -> None:
    # The topics' own max.message.bytes (40 kB here) is often below the producer's: the
    # letter of a 60 kB event refused by its topic was cut to half the producer's limit,
    # refused by the dead-letter topic too, and the session lost.
    upstream, publisher = a_60_kb_session_between_two(), MemoryPublisher()
    publisher.topic_limits = {COMPLETED: 30_000, DLQ: 40_000}
    outcome = await scanner_for(upstream, publisher, state).listing(LISTING, "completed", WINDOW)
    assert publisher.session_ids(COMPLETED) == [1, 3]
    (letter,) = [e for e in publisher.acknowledged if e.topic == DLQ]
    assert dict(letter.headers)["dlq_session_id"] == b"2"
    assert dict(letter.headers)["dlq_truncated"] == b"true"
    assert outcome.delivered.dead_letters == 1


async def test_an_event_whose_dead_letter_is_refused_too_is_not_remembered_as_placed(
    state: StateStore,
) -> None:
    # Nowhere on Kafka: not remembered, so the next reading of its window (the overlap, the
    # reconcile sweep) meets it again, and says so again, until a topic takes it.
    upstream, publisher = a_60_kb_session_between_two(), MemoryPublisher()
    publisher.topic_limits = {COMPLETED: 30_000, DLQ: 1_000}
    scanner = scanner_for(upstream, publisher, state)
    first = await scanner.listing(LISTING, "completed", WINDOW)
    assert publisher.session_ids(COMPLETED) == [1, 3]
    assert state.already_emitted(1, "completed", [1, 2, 3]) == {1, 3}
    assert first.delivered.dead_letters == 0
    publisher.topic_limits = {COMPLETED: 30_000}
    again = await scanner.listing(LISTING, "completed", WINDOW)
    letters = [e for e in publisher.acknowledged if e.topic == DLQ]
    assert [dict(e.headers)["dlq_session_id"] for e in letters] == [b"2"]
    assert state.already_emitted(1, "completed", [1, 2, 3]) == {1, 2, 3}
    assert again.delivered.duplicates == 2 and again.delivered.dead_letters == 1


async def test_a_session_id_the_state_cannot_hold_is_dead_lettered_and_the_page_proceeds(
    state: StateStore,
) -> None:
    # An id of 2**63 or more is a positive integer to JSON but not to SQLite: it used to crash
    # every tick at the commit, holding back the good sessions of its page for ever.
    huge, largest = 2**63 + 5, 2**63 - 1
    upstream = MemoryUpstream([Session(1, T0 - H, 60), Session(3, T0 - H, 60)], T0)
    upstream.sessions += [Session(largest, T0 - H, 60), Session(huge, T0 - H, 60)]
    publisher = MemoryPublisher()
    scanner = scanner_for(upstream, publisher, state)
    first = await scanner.listing(LISTING, "completed", WINDOW)
    again = await scanner.listing(LISTING, "completed", WINDOW)
    assert publisher.session_ids(COMPLETED) == [1, 3, largest]
    assert state.already_emitted(1, "completed", [largest]) == {largest}, "by its own id"
    (letter,) = [e for e in publisher.acknowledged if e.topic == DLQ]
    assert dict(letter.headers)["dlq_reason"].startswith(b"id is missing or not a positive")
    assert first.delivered.dead_letters == 1 and again.delivered.dead_letters == 0


async def test_an_event_kafka_refuses_becomes_a_dead_letter_and_the_page_proceeds(
    state: StateStore,
) -> None:
    big = Session(2, T0 - H, 60, {"guests": [{"name": "x" * 100} for _ in range(50)]})
    upstream = MemoryUpstream([Session(1, T0 - H, 60), big, Session(3, T0 - H, 60)], T0)
    publisher = MemoryPublisher(max_event_bytes=3000)
    outcome = await scanner_for(upstream, publisher, state).listing(LISTING, "completed", WINDOW)
    assert publisher.session_ids(COMPLETED) == [1, 3]
    (letter,) = [e for e in publisher.acknowledged if e.topic == DLQ]
    headers = dict(letter.headers)
    assert headers["dlq_session_id"] == b"2" and headers["dlq_reason"] == b"too large"
    assert int(headers["dlq_size"]) > 3000 and len(letter.value) <= 3000
    assert state.already_emitted(1, "completed", [1, 2, 3]) == {1, 2, 3}
    assert outcome.delivered.dead_letters == 1


async def test_every_record_read_from_upstream_is_counted_re_reads_included(
    state: StateStore,
) -> None:
    from poller import metrics

    def read() -> float:
        labels = {"partner": "1", "stream": "completed"}
        return (
            metrics.REGISTRY.get_sample_value("glance_poller_upstream_records_read_total", labels)
            or 0.0
        )

    before = read()
    scanner = scanner_for(MemoryUpstream(sessions(10), T0), MemoryPublisher(), state)
    await scanner.listing(LISTING, "completed", WINDOW)
    # Read again (an overlap): nothing new is delivered, and the 10 records still count.
    again = await scanner.listing(LISTING, "completed", WINDOW)
    assert again.delivered.emitted == 0
    assert read() - before == 20


# The feed on its own: what a record is remembered by (stable across releases and date wire
# forms), where a record without a start is counted, the started event of a session first
# seen ended (acknowledged before its completed one), and the metrics a settled page moves.


def record(raw: Any) -> SourceRecord:
    return SourceRecord("agent", "puid", raw)


def session(session_id: int, **extra: Any) -> SourceRecord:
    return record(Session(session_id, T0 - H, 60, extra).record())


def feed_for(
    state: StateStore,
    publisher: MemoryPublisher,
    partner_id: int = 1,
    *,
    started_enabled: bool = True,
) -> PartnerFeed:
    builder = EventBuilder(partner_id, TOPICS, PiiPolicy("keep"))
    return PartnerFeed(partner_id, builder, publisher, state, started_enabled=started_enabled)


# What a record is remembered by


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"id": 7}, 7),
        ({"id": 1}, 1),
        ({"id": 0}, None),
        ({"id": -3}, None),
        ({"id": True}, None),
        ({"id": "7"}, None),
        ({"id": 7.0}, None),
        ({}, None),
        ([7], None),
        (None, None),
    ],
)
def test_only_a_positive_integer_is_a_session_id(raw: Any, expected: int | None) -> None:
    assert record_id(record(raw)) == expected
    if expected is not None:
        assert memory_key(record(raw)) == expected


def test_a_record_without_an_id_is_remembered_by_a_stable_negative_key() -> None:
    raw = {"id": None, "startTime": "2026-03-10T12:00:00Z", "guests": [{"name": "a"}]}
    key = memory_key(record(raw))
    # Stored in the state: it must not change between releases (or every id-less record
    # is dead-lettered again after an upgrade), and it must fit SQLite's signed 64 bits.
    assert key == -7470788864974305823
    assert -(2**63) <= key < 0
    # The key order of the JSON object does not matter; its content does.
    assert memory_key(record(dict(reversed(raw.items())))) == key
    assert memory_key(record({**raw, "guests": [{"name": "b"}]})) != key
    # The user it was listed under is not part of it.
    assert memory_key(SourceRecord("other", None, raw)) == key


def test_a_record_without_an_id_has_one_key_whatever_the_wire_form_of_its_dates() -> None:
    iso = {"id": "x", "startTime": "2026-03-10T12:00:00Z", "endTime": "2026-03-10T12:01:00Z"}
    asmx = {"id": "x", "startTime": "/Date(1773144000000)/", "endTime": "/Date(1773144060000)/"}
    offset = {
        "id": "x",
        "startTime": "/Date(1773144000000+0100)/",
        "endTime": "/Date(1773144060000-0500)/",
    }
    key = memory_key(record(iso))
    assert memory_key(record(asmx)) == key == memory_key(record(offset))
    assert memory_key(record({**asmx, "endTime": "/Date(1773144061000)/"})) != key


def test_an_unreadable_asmx_date_still_gives_a_stable_key() -> None:
    raw = {"startTime": "/Date(99999999999999999999)/"}
    key = memory_key(record(raw))
    assert key < 0 and memory_key(record(dict(raw))) == key
    assert key != memory_key(record({"startTime": "/Date(99999999999999999998)/"}))
    # Kept as it was: not confused with a record holding the bare number.
    number = 9999999999999999
    assert memory_key(record({"startTime": f"/Date({number})/"})) != memory_key(
        record({"startTime": number})
    )


# Dead letters and where they are counted


async def test_a_bad_record_is_counted_in_the_window_it_was_listed_in(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    bad = session(5, startTime="yesterday")
    delivered = await feed.deliver([bad], "completed", "PartnerCompletedSessions", None, WINDOW)
    assert delivered.dead_letters == 1 and delivered.emitted == 0
    assert state.already_emitted(1, "completed", [5]) == {5}
    # Upstream listed it in WINDOW, so its start is taken as the window's start.
    assert state.count_emitted(1, "completed", Window(WINDOW.start, WINDOW.start + S)) == 1
    (letter,) = publisher.acknowledged
    assert letter.topic == TOPICS.dlq
    assert dict(letter.headers)["dlq_operation"] == b"PartnerCompletedSessions"


async def test_a_bad_record_listed_again_in_a_later_starting_window_is_counted_there(
    state: StateStore,
) -> None:
    """Its start lies in every window it is listed in: remembered at the first one's start, it
    counted in the bucket before its own, where it hid a session missing from the feed from
    the reconcile sweep, and left its own bucket short for ever. The sweep's rescan of its own
    bucket moves it there."""
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    bad = session(5, startTime="yesterday")
    scan = Window(T0 - 5 * M, T0 + 5 * M)
    await feed.deliver([bad], "completed", "PartnerCompletedSessions", None, scan)
    assert state.count_emitted(1, "completed", Window(T0 - H, T0)) == 1
    bucket = Window(T0, T0 + H)
    delivered = await feed.deliver([bad], "completed", "PartnerCompletedSessions", None, bucket)
    assert delivered.duplicates == 1 and len(publisher.acknowledged) == 1, "dead-lettered once"
    assert state.count_emitted(1, "completed", Window(T0 - H, T0)) == 0
    assert state.count_emitted(1, "completed", bucket) == 1
    # An earlier-starting window says less: it does not move it back.
    await feed.deliver([bad], "completed", "PartnerCompletedSessions", None, scan)
    assert state.count_emitted(1, "completed", bucket) == 1


async def test_a_bad_record_listed_in_no_window_is_counted_now(state: StateStore) -> None:
    feed = feed_for(state, MemoryPublisher(), started_enabled=False)
    before = datetime.now(UTC).replace(microsecond=0)
    await feed.deliver([session(5, startTime="yesterday")], "completed", "Op")
    after = datetime.now(UTC) + S
    assert state.count_emitted(1, "completed", Window(before, after)) == 1


async def test_a_bad_record_with_a_start_is_counted_at_its_start(state: StateStore) -> None:
    feed = feed_for(state, MemoryPublisher(), started_enabled=False)
    bad = session(5, guests="nobody")
    delivered = await feed.deliver([bad], "completed", "Op", None, WINDOW)
    assert delivered.dead_letters == 1
    assert state.count_emitted(1, "completed", Window(T0 - H, T0 - H + S)) == 1
    assert state.count_emitted(1, "completed", Window(WINDOW.start, WINDOW.start + S)) == 0


async def test_the_records_after_a_bad_one_are_still_sent(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    page = [session(1), session(2, startTime="yesterday"), session(3)]
    delivered = await feed.deliver(page, "completed", "Op", None, WINDOW)
    assert publisher.session_ids(TOPICS.completed) == [1, 3]
    assert delivered == Delivered(records=3, emitted=2, dead_letters=1)
    assert state.already_emitted(1, "completed", [1, 2, 3]) == {1, 2, 3}


async def test_a_commit_through_the_feed_forgets_old_ids(state: StateStore) -> None:
    feed = feed_for(state, MemoryPublisher(), started_enabled=False)
    await feed.deliver([session(1)], "completed", "Op")
    feed.commit(forget=Forget(("completed",), T0))
    assert state.already_emitted(1, "completed", [1]) == set()


async def test_the_same_record_twice_in_one_page_is_sent_once(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    delivered = await feed.deliver([session(1), session(1), session(2)], "completed", "Op")
    assert publisher.session_ids(TOPICS.completed) == [1, 2]
    assert delivered == Delivered(records=3, emitted=2, duplicates=1)


async def test_a_page_sent_meanwhile_is_not_sent_again_before_it_is_committed(
    state: StateStore,
) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    first = await feed.send([session(1), session(2)], "completed", "Op")
    second = await feed.send([session(2), session(3)], "completed", "Op", in_flight=first)
    assert (await feed.settle(first)).emitted == 2
    assert await feed.settle(second) == Delivered(records=2, emitted=1, duplicates=1)
    assert publisher.session_ids(TOPICS.completed) == [1, 2, 3]


async def test_the_page_cursors_are_committed_with_its_ids(state: StateStore) -> None:
    feed = feed_for(state, MemoryPublisher(), started_enabled=False)
    cursor = Cursor(WINDOW.start, WINDOW, 2)
    await feed.deliver([session(1), session(2)], "completed", "Op", {"completed": cursor})
    assert state.cursor(1, "completed") == cursor
    assert state.already_emitted(1, "completed", [1, 2]) == {1, 2}


# The started event of a session first seen already ended


async def test_a_session_first_seen_ended_gets_its_started_event_first(
    state: StateStore,
) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher)
    delivered = await feed.deliver([session(1), session(2)], "completed", "Op")
    assert [(e.topic, e.session_id) for e in publisher.acknowledged] == [
        (TOPICS.started, 1),
        (TOPICS.started, 2),
        (TOPICS.completed, 1),
        (TOPICS.completed, 2),
    ]
    # Acknowledged before the completed events were even handed over.
    assert publisher.log == [("sent", 2), ("acked", 2), ("sent", 2), ("acked", 2)]
    started = [orjson.loads(e.value) for e in publisher.acknowledged[:2]]
    assert [body["observedActive"] for body in started] == [False, False]
    assert delivered.started_on_completion == 2 and delivered.emitted == 2
    assert state.already_emitted(1, "started", [1, 2]) == {1, 2}
    assert state.count_emitted(1, "started", WINDOW) == 2
    # The completed events are remembered beside them: not sent again on the next reading.
    assert state.already_emitted(1, "completed", [1, 2]) == {1, 2}


async def test_a_session_seen_started_gets_no_second_started_event(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher)
    await feed.deliver([session(1)], "started", "PartnerActiveSessions")
    delivered = await feed.deliver([session(1), session(2)], "completed", "Op")
    assert publisher.session_ids(TOPICS.started) == [1, 2]
    assert publisher.session_ids(TOPICS.completed) == [1, 2]
    assert delivered.started_on_completion == 1


async def test_no_started_event_when_the_started_stream_is_off(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    delivered = await feed.deliver([session(1)], "completed", "Op")
    assert publisher.session_ids(TOPICS.started) == []
    assert delivered.started_on_completion == 0
    assert state.already_emitted(1, "started", [1]) == set()


async def test_the_started_stream_is_on_unless_turned_off(state: StateStore) -> None:
    publisher = MemoryPublisher()
    builder = EventBuilder(1, TOPICS, PiiPolicy("keep"))
    await PartnerFeed(1, builder, publisher, state).deliver([session(1)], "completed", "Op")
    assert publisher.session_ids(TOPICS.started) == [1]


async def test_a_bad_or_duplicate_record_gets_no_started_event(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher)
    await feed.deliver([session(1)], "completed", "Op")
    bad = session(2, startTime="yesterday")
    delivered = await feed.deliver([session(1), bad], "completed", "Op")
    assert publisher.session_ids(TOPICS.started) == [1]
    assert delivered.started_on_completion == 0 and delivered.dead_letters == 1


async def test_only_the_completed_stream_adds_started_events(state: StateStore) -> None:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher)
    delivered = await feed.deliver([session(1)], "started", "PartnerActiveSessions")
    assert [e.topic for e in publisher.acknowledged] == [TOPICS.started]
    assert orjson.loads(publisher.acknowledged[0].value)["observedActive"] is True
    assert delivered.started_on_completion == 0


async def test_a_refused_started_event_is_dead_lettered_before_the_completed_is_sent(
    state: StateStore,
) -> None:
    publisher = MemoryPublisher(max_event_bytes=3000)
    feed = feed_for(state, publisher)
    big = session(2, guests=[{"name": "x" * 100} for _ in range(50)])
    await feed.deliver([big], "completed", "Op")
    letters = [e for e in publisher.acknowledged if e.topic == TOPICS.dlq]
    assert [dict(e.headers)["dlq_event_type"] for e in letters] == [
        f"{CE_TYPE_PREFIX}started".encode(),
        f"{CE_TYPE_PREFIX}completed".encode(),
    ]
    assert all(len(e.value) <= 3000 for e in letters)
    assert state.already_emitted(1, "started", [2]) == {2}


# Metrics


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_settled_page_moves_the_metrics(state: StateStore) -> None:
    partner = 4242
    labels = {"partner": str(partner), "stream": "completed"}
    names = {
        "pages": "glance_poller_pages_fetched_total",
        "sessions": "glance_poller_sessions_fetched_total",
        "duplicates": "glance_poller_duplicates_skipped_total",
        "dead_letters": "glance_poller_dead_letters_total",
    }
    topics = [TOPICS.completed, TOPICS.started, TOPICS.dlq]
    produced = "glance_poller_events_produced_total"

    def snapshot() -> dict[str, float]:
        values = {key: sample(name, **labels) for key, name in names.items()}
        values.update({t: sample(produced, partner=str(partner), topic=t) for t in topics})
        return values

    publisher = MemoryPublisher(max_event_bytes=3000)
    feed = feed_for(state, publisher, partner, started_enabled=False)
    await feed.deliver([session(1)], "completed", "Op")
    before = snapshot()
    big = session(3, guests=[{"name": "x" * 100} for _ in range(50)])
    page = [session(1), session(2), big, session(4, startTime="yesterday")]
    await feed.deliver(page, "completed", "Op")
    after = snapshot()
    assert {key: after[key] - before[key] for key in after} == {
        "pages": 1,
        "sessions": 4,
        "duplicates": 1,
        "dead_letters": 2,
        # Session 3 was refused: not counted as produced on the completed topic.
        TOPICS.completed: 1,
        TOPICS.started: 0,
        TOPICS.dlq: 1,
    }


def test_delivered_adds_up_and_logs_every_count() -> None:
    total = Delivered(1, 2, 3, 4, 5)
    total.add(Delivered(10, 20, 30, 40, 50))
    assert total.as_log() == {
        "records": 11,
        "emitted": 22,
        "duplicates": 33,
        "dead_letters": 44,
        "started_on_completion": 55,
    }


# The scan on its own: how far it reads, what it commits, and how it ends.


class RepeatingUpstream(MemoryUpstream):
    """Answers its second page with the ``nextId`` it already gave: a loop the scan ends."""

    async def session_pages(  # type: ignore[override]
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        paginator = Paginator(start_token)
        listed = self._listed(operation, window)
        while not paginator.finished:
            token = paginator.token
            self.calls.append((operation, window, token))
            chunk = [s for s in listed if s.id > token][: self.page_size]
            records = [SourceRecord("agent", "puid", s.record()) for s in chunk]
            paginator.advance(self.page_size)  # the same token every time
            yield SessionPage(token, self.page_size, records, served_at=self.now)


def scan_of(
    upstream: MemoryUpstream, state: StateStore, stopping: asyncio.Event | None = None
) -> tuple[Scanner, MemoryPublisher]:
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    scanner = Scanner(upstream, feed, upstream.page_size, stopping or asyncio.Event())  # type: ignore[arg-type]
    return scanner, publisher


async def test_a_whole_window_is_read_and_its_pages_counted(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(8), T0 + H)
    scanner, publisher = scan_of(upstream, state)
    outcome = await scanner.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed")
    assert outcome.complete and outcome.pages == 3 and outcome.served_at == T0 + H
    assert not outcome.cut_short
    assert outcome.delivered == Delivered(records=8, emitted=8)
    assert publisher.session_ids(COMPLETED) == list(range(1, 9))
    assert [token for _, _, token in upstream.calls] == [0, 3, 6]
    assert all(window == WINDOW for _, window, _ in upstream.calls)


async def test_a_scan_reads_at_most_max_pages_and_resumes_there(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(9), T0)
    scanner, publisher = scan_of(upstream, state)
    start = Cursor(WINDOW.start, WINDOW)
    outcome = await scanner.scan(LISTING, "completed", start, "completed", max_pages=2)
    assert outcome.pages == 2 and not outcome.complete and outcome.cut_short
    assert outcome.cursor == Cursor(WINDOW.start, WINDOW, 6) == state.cursor(1, "completed")
    assert publisher.session_ids(COMPLETED) == list(range(1, 7))
    rest = await scanner.scan(LISTING, "completed", outcome.cursor, "completed")
    assert rest.complete and rest.pages == 1 and rest.cursor == Cursor(WINDOW.end)
    assert not rest.cut_short
    assert publisher.session_ids(COMPLETED) == list(range(1, 10))


async def test_a_listing_whose_last_page_is_its_budgets_last_is_complete_not_cut_short(
    state: StateStore,
) -> None:
    """Its last page says so (no next token): the budget reached there cut nothing short, and
    a caller may trust the listing whole (the started stream records what it saw open)."""
    upstream = MemoryUpstream(sessions(8), T0)
    scanner, _ = scan_of(upstream, state)
    outcome = await scanner.listing(LISTING, "completed", WINDOW, max_pages=3)
    assert outcome.pages == 3 and outcome.complete and not outcome.cut_short
    assert [token for _, _, token in upstream.calls] == [0, 3, 6], "no call past the last page"


async def test_a_stop_finishes_every_page_handed_to_kafka(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(9), T0)
    stopping = asyncio.Event()
    scanner, publisher = scan_of(upstream, state, stopping)
    outcome = await scanner.scan(
        LISTING,
        "completed",
        Cursor(WINDOW.start, WINDOW),
        "completed",
        on_page=lambda delivered, after: stopping.set(),
    )
    # Page 2 was already sent when page 1 settled and the stop came: it is settled too.
    assert outcome.pages == 2 and not outcome.complete
    assert outcome.cursor == Cursor(WINDOW.start, WINDOW, 6) == state.cursor(1, "completed")
    assert publisher.session_ids(COMPLETED) == list(range(1, 7))
    assert state.already_emitted(1, "completed", range(1, 10)) == set(range(1, 7))


async def test_a_scan_asked_to_stop_reads_nothing(state: StateStore) -> None:
    stopping = asyncio.Event()
    stopping.set()
    scanner, publisher = scan_of(MemoryUpstream(sessions(3), T0), state, stopping)
    start = Cursor(WINDOW.start, WINDOW)
    outcome = await scanner.scan(LISTING, "completed", start, "completed")
    assert outcome.pages == 0 and not outcome.complete and outcome.cursor == start
    assert publisher.handed == [] and state.cursor(1, "completed") is None


async def test_the_other_cursors_are_committed_beside_each_page(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(4), T0)
    scanner, _ = scan_of(upstream, state)
    beside = Cursor(T0 - H)
    await scanner.scan(
        LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed", also={"other": beside}
    )
    assert state.cursor(1, "other") == beside
    assert state.cursor(1, "completed") == Cursor(WINDOW.end)


async def test_a_scan_without_a_cursor_name_commits_only_ids_and_the_others(
    state: StateStore,
) -> None:
    scanner, _ = scan_of(MemoryUpstream(sessions(4), T0), state)
    beside = Cursor(T0 - H)
    outcome = await scanner.scan(
        LISTING, "completed", Cursor(WINDOW.start, WINDOW), also={"other": beside}
    )
    assert outcome.cursor == Cursor(WINDOW.end) and outcome.complete
    assert state.cursor(1, "completed") is None and state.cursor(1, "other") == beside
    assert state.already_emitted(1, "completed", range(1, 5)) == {1, 2, 3, 4}


async def test_a_listing_reads_its_whole_window_and_commits_no_cursor(state: StateStore) -> None:
    upstream = MemoryUpstream(sessions(4), T0)
    scanner, _ = scan_of(upstream, state)
    seen: list[int] = []
    outcome = await scanner.listing(
        LISTING, "completed", WINDOW, on_page=lambda d, after: seen.append(d.emitted)
    )
    assert outcome.complete and seen == [3, 1]
    assert [token for _, _, token in upstream.calls] == [0, 3]
    assert state.cursor(1, "completed") is None


async def test_a_cursor_outside_any_window_cannot_be_scanned(state: StateStore) -> None:
    scanner, _ = scan_of(MemoryUpstream(sessions(1), T0), state)
    with pytest.raises(ValueError, match=r"^the cursor is not in a window$"):
        await scanner.scan(LISTING, "completed", Cursor(T0), "completed")


async def test_a_repeated_page_token_ends_the_window_after_settling(state: StateStore) -> None:
    upstream = RepeatingUpstream(sessions(9), T0)
    scanner, publisher = scan_of(upstream, state)
    outcome = await scanner.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed")
    assert outcome.pages == 1 and not outcome.complete
    assert publisher.session_ids(COMPLETED) == [1, 2, 3]
    assert state.already_emitted(1, "completed", range(1, 10)) == {1, 2, 3}
    # The window is given up, not looped over: the cursor moves past it.
    assert outcome.cursor == Cursor(WINDOW.end) == state.cursor(1, "completed")


async def test_a_repeated_page_token_in_a_listing_commits_no_cursor(state: StateStore) -> None:
    scanner, _ = scan_of(RepeatingUpstream(sessions(9), T0), state)
    outcome = await scanner.listing(LISTING, "completed", WINDOW)
    assert outcome.cursor == Cursor(WINDOW.end) and not outcome.complete
    assert state.cursor(1, "completed") is None


class ScriptedUpstream(MemoryUpstream):
    """Answers with the pages it is given, in order, whatever their content; notes the page
    size asked for."""

    def __init__(self, pages: list[list[Session]]) -> None:
        super().__init__([s for page in pages for s in page], T0)
        self.pages = pages
        self.sizes: list[int] = []

    async def session_pages(  # type: ignore[override]
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        for number, chunk in enumerate(self.pages[start_token:], start_token):
            self.sizes.append(page_size)
            records = [SourceRecord("agent", "puid", s.record()) for s in chunk]
            more = number + 1 < len(self.pages)
            yield SessionPage(number, number + 1 if more else 0, records, served_at=self.now)


async def test_a_session_on_two_pipelined_pages_is_sent_once(state: StateStore) -> None:
    one, two, three = sessions(3)
    upstream = ScriptedUpstream([[one, two], [two, three]])
    scanner, publisher = scan_of(upstream, state)
    outcome = await scanner.listing(LISTING, "completed", WINDOW)
    assert publisher.session_ids(COMPLETED) == [1, 2, 3]
    assert outcome.delivered == Delivered(records=4, emitted=3, duplicates=1)


async def test_the_scan_asks_for_its_own_page_size(state: StateStore) -> None:
    upstream = ScriptedUpstream([sessions(2), sessions(2, 3)])
    publisher = MemoryPublisher()
    feed = feed_for(state, publisher, started_enabled=False)
    await Scanner(upstream, feed, 2, asyncio.Event()).listing(LISTING, "completed", WINDOW)  # type: ignore[arg-type]
    assert upstream.sizes == [2, 2]


async def test_a_bad_record_without_a_start_is_counted_in_the_scanned_window(
    state: StateStore,
) -> None:
    bad = Session(2, T0 - H, 60, {"startTime": "yesterday"})
    upstream = ScriptedUpstream([[Session(1, T0 - H, 60), bad]])
    scanner, _ = scan_of(upstream, state)
    outcome = await scanner.listing(LISTING, "completed", WINDOW)
    assert outcome.delivered.dead_letters == 1
    assert state.count_emitted(1, "completed", Window(WINDOW.start, WINDOW.start + S)) == 1


class FailingAfter(MemoryUpstream):
    """Answers ``pages`` pages of a listing, then fails."""

    def __init__(self, sessions: list[Session], now: datetime, pages: int) -> None:
        super().__init__(sessions, now)
        self.pages = pages

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        served = 0
        async for page in super().session_pages(operation, window, page_size, start_token):
            if served == self.pages:
                raise PublishFailed("unavailable", "upstream gave up")
            served += 1
            yield page


async def test_a_scan_that_fails_gives_back_the_room_it_held(state: StateStore) -> None:
    # A backfill's windows share their room for pages: a window that fails must not keep
    # it, or the others would wait for it forever.
    held = HeldPages(2)
    builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
    feed = PartnerFeed(1, builder, MemoryPublisher(), state, started_enabled=False)
    failing = Scanner(FailingAfter(sessions(9), T0, 2), feed, 3, asyncio.Event(), held)  # type: ignore[arg-type]
    with pytest.raises(PublishFailed):
        await failing.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed")
    assert held.held == 0 and not held.full()
    other = Scanner(MemoryUpstream(sessions(9), T0), feed, 3, asyncio.Event(), held)  # type: ignore[arg-type]
    outcome = await asyncio.wait_for(
        other.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed"), 5
    )
    assert outcome.cursor == Cursor(WINDOW.end)


async def test_a_scan_holds_its_pages_in_the_shared_room_and_gives_it_all_back(
    state: StateStore,
) -> None:
    # The room is what bounds a backfill's memory across its windows: a scan takes room for
    # each page it builds (two at once while the next is built behind one awaiting Kafka)
    # and, the window done, leaves exactly the room it found.
    held = HeldPages(2)
    builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
    feed = PartnerFeed(1, builder, MemoryPublisher(), state, started_enabled=False)
    scanner = Scanner(MemoryUpstream(sessions(9), T0), feed, 3, asyncio.Event(), held)  # type: ignore[arg-type]
    outcome = await scanner.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed")
    assert outcome.cursor == Cursor(WINDOW.end) and outcome.pages == 3
    assert held.peak == 2 and held.held == 0 and not held.full()


class StalledAt(MemoryUpstream):
    """Answers its pages until the one asked for with ``token``, which never comes."""

    def __init__(self, sessions: list[Session], now: datetime, token: int) -> None:
        super().__init__(sessions, now)
        self.token = token

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        async for page in super().session_pages(operation, window, page_size, start_token):
            if page.request_token == self.token:
                await asyncio.Event().wait()
            yield page


async def test_a_scan_that_fails_with_a_page_read_ahead_raises_its_own_failure(
    state: StateStore,
) -> None:
    # Page 3 is built while page 4's request is out (Kafka keeps up); page 2's acknowledgement
    # then fails. The scan withdraws the request and reports the failure, not the withdrawal.
    upstream = StalledAt(sessions(12), T0, token=9)
    publisher = MemoryPublisher()
    publisher.fail_ack_calls = {2}
    scanner = scanner_for(upstream, publisher, state)
    with pytest.raises(PublishFailed):
        await asyncio.wait_for(
            scanner.scan(LISTING, "completed", Cursor(WINDOW.start, WINDOW), "completed"), 5
        )
    assert [token for _, _, token in upstream.calls] == [0, 3, 6, 9]
    assert state.cursor(1, "completed") == Cursor(WINDOW.start, WINDOW, 3)
