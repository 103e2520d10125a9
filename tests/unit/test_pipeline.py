"""The core promise at its seam, in milliseconds: a page is committed only after every one of
its events is acknowledged; each session is emitted once across overlapping windows and
restarts; a crash between the acknowledgement and the commit re-sends, never skips; pages are
pipelined yet committed in order; dead letters are remembered once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from poller.cursor import Cursor
from poller.errors import PublishFailed
from poller.events import EventBuilder, PiiPolicy, event_id
from poller.settings import TopicSettings
from poller.state import StateStore
from poller.streams.feed import PartnerFeed
from poller.streams.scan import Scanner
from poller.window import Window
from tests.unit.fakes import T0, MemoryPublisher, MemoryUpstream, Session

LISTING = "PartnerCompletedSessions"
COMPLETED = TopicSettings().completed
DLQ = TopicSettings().dlq
H = timedelta(hours=1)
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
        on_page=lambda page, delivered, after: committed.append(after),
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
