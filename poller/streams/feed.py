"""One partner's path from upstream records to acknowledged, remembered events.

Every stream that emits session events goes through ``send`` then ``settle``: drop what was
already emitted, build events (or dead letters), hand them to Kafka; then await every
acknowledgement, dead-letter what Kafka refused, and only then commit ids and cursors in one
transaction. ``commit`` is the one place the daemon writes its state. A session first seen
already ended gets its started event here, acknowledged before its completed event is sent.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import orjson

from poller import metrics
from poller.cursor import MAX_STORED_INT, Cursor
from poller.errors import BadRecord
from poller.events import CE_TYPE_PREFIX, Event, EventBuilder, EventType
from poller.glance.dates import parse_returned, to_event
from poller.glance.records import SourceRecord
from poller.logs import get_logger
from poller.publisher import Publication, Publisher, Refusal, publish
from poller.state import Forget, StateStore
from poller.window import Window

log = get_logger(__name__)
Memo = list[tuple[int, datetime]]
# (stream, session id) of events placed on no topic: refused, and their dead letter too.
Unplaced = set[tuple[str, int]]
# A dead letter's most: it names the event in its headers and holds the start of its value.
# Kept well under any topic's max.message.bytes (they are often below the producer's limit):
# a letter refused too would leave its event on no topic.
LETTER_BYTES = 32 * 1024


@dataclass
class Delivered:
    records: int = 0
    emitted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    # Started events published just before the completed one (never seen open).
    started_on_completion: int = 0

    def add(self, other: Delivered) -> None:
        for name in fields(self):
            setattr(self, name.name, getattr(self, name.name) + getattr(other, name.name))

    def as_log(self) -> dict[str, int]:
        return {name.name: getattr(self, name.name) for name in fields(self)}


def record_id(record: SourceRecord) -> int | None:
    raw = record.raw
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if type(value) is int and 0 < value <= MAX_STORED_INT else None


def memory_key(record: SourceRecord) -> int:
    """What the state remembers a record by: its id, or for a record without a usable id a
    negative hash of its content (never equal to a real id), so that it too is handled once
    and counted in its start-time bucket."""
    session_id = record_id(record)
    if session_id is not None:
        return session_id
    content = orjson.dumps(record.raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    # The same record may come back with its dates in the other wire form.
    canonical = _ASMX_DATE.sub(_iso_date, content.decode())
    return -(int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") >> 1) - 1


_ASMX_DATE = re.compile(r'"/Date\((-?\d+)(?:[+-]\d{4})?\)/"')


def _iso_date(match: re.Match[str]) -> str:
    try:
        return f'"{to_event(parse_returned(match.group(0)[1:-1]))}"'
    except ValueError:
        return match.group(0)


def _start_of(record: SourceRecord, listed_in: Window | None) -> datetime:
    start = record.start()
    if start is not None:
        return start
    # Upstream listed it in this window, so its start lies inside it.
    return listed_in.start if listed_in is not None else datetime.now(UTC)


@dataclass
class Sending:
    """A page's events handed to Kafka; ``PartnerFeed.settle`` commits them once all are
    acknowledged (or refused, and dead-lettered)."""

    stream: EventType
    operation: str
    publication: Publication
    cursors: Mapping[str, Cursor]
    emitted: dict[str, Memo]
    counts: Delivered
    events: list[Event] = field(default_factory=list)

    @property
    def keys(self) -> set[int]:
        return {key for key, _ in self.emitted.get(self.stream, ())}


class PartnerFeed:
    def __init__(
        self,
        partner_id: int,
        builder: EventBuilder,
        publisher: Publisher,
        state: StateStore,
        *,
        started_enabled: bool = True,
    ) -> None:
        self.partner_id = partner_id
        self.builder = builder
        self.publisher = publisher
        self.state = state
        # Off when the started stream is disabled or upstream lacks its operation.
        self.started_enabled = started_enabled

    async def deliver(
        self,
        records: Sequence[SourceRecord],
        stream: EventType,
        operation: str,
        cursors: Mapping[str, Cursor] | None = None,
        listed_in: Window | None = None,
    ) -> Delivered:
        return await self.settle(await self.send(records, stream, operation, cursors, listed_in))

    async def send(
        self,
        records: Sequence[SourceRecord],
        stream: EventType,
        operation: str,
        cursors: Mapping[str, Cursor] | None = None,
        listed_in: Window | None = None,
        in_flight: Sending | None = None,
    ) -> Sending:
        """Build and queue the events of ``records``; ``settle`` then waits for every
        acknowledgement and commits. Meanwhile the caller may prepare the next page: pass
        this one as its ``in_flight`` (its ids are not committed yet) and settle in order."""
        counts = Delivered(records=len(records))
        keys = [memory_key(record) for record in records]
        already = self.state.already_emitted(self.partner_id, stream, keys)
        if in_flight is not None:
            already |= in_flight.keys
        fresh: list[tuple[SourceRecord, Event]] = []
        dead: list[Event] = []
        remembered: Memo = []
        for record, key in zip(records, keys, strict=True):
            if key in already:
                counts.duplicates += 1
                if listed_in is not None and record.start() is None:
                    # Its start lies in this window too: where it is counted may move later.
                    remembered.append((key, listed_in.start))
                continue
            already.add(key)
            try:
                if stream == "completed":
                    event = self.builder.completed(record)
                else:
                    event = self.builder.started(record, observed_active=True)
            except BadRecord as exc:
                dead.append(self.builder.dead_letter(record, exc.reason, operation))
                # Remembered like an event: the same bad record is dead-lettered once.
                remembered.append((key, _start_of(record, listed_in)))
                continue
            fresh.append((record, event))
        started_first = self._started_for(fresh) if stream == "completed" else []
        unplaced: Unplaced = set()
        if started_first:
            # Acknowledged before its completed event is even sent.
            refused = await publish(self.publisher, started_first)
            _, unplaced = await self._dead_letter(refused, operation)
        events = [event for _, event in fresh] + dead
        publication = await self.publisher.send(events)
        remembered.extend(_memo(event for _, event in fresh))
        emitted: dict[str, Memo] = {stream: remembered}
        if started_first:
            emitted["started"] = _memo(started_first)
        emitted = _without(emitted, unplaced)
        counts.emitted = len(fresh)
        counts.dead_letters = len(dead)
        counts.started_on_completion = len(started_first)
        return Sending(
            stream, operation, publication, cursors or {}, emitted, counts, events + started_first
        )

    async def settle(self, sending: Sending) -> Delivered:
        """Wait for every acknowledgement of ``sending``, dead-letter what Kafka refused,
        then commit its ids and cursors."""
        refused = await sending.publication.acknowledged()
        letters, unplaced = await self._dead_letter(refused, sending.operation)
        sending.counts.dead_letters += letters
        self.commit(cursors=sending.cursors, emitted=_without(sending.emitted, unplaced))
        self._count(sending.stream, sending.counts, sending.events, refused)
        return sending.counts

    def commit(
        self,
        *,
        cursors: Mapping[str, Cursor] | None = None,
        emitted: Mapping[str, Memo] | None = None,
        forget: Forget | None = None,
    ) -> None:
        """The one place the daemon writes its state: one transaction."""
        self.state.commit(self.partner_id, cursors=cursors, emitted=emitted, forget=forget)

    async def _dead_letter(self, refused: list[Refusal], operation: str) -> tuple[int, Unplaced]:
        """Kafka's refusals as dead letters (cut to ``LETTER_BYTES``), acknowledged before the
        page is committed: the refused session is then remembered like an emitted one. Returns
        the letters placed, and the events whose letter was refused too: on no topic at all,
        they must not be remembered as placed."""
        if not refused:
            return 0, set()
        limit = min(self.publisher.max_event_bytes, LETTER_BYTES)
        letters = [self.builder.refused(r.event, r.reason, operation, limit) for r in refused]
        for refusal in refused:
            log.warning(
                "kafka cannot take an event: sent to the dead-letter topic",
                session_id=refusal.event.session_id,
                topic=refusal.event.topic,
                size=len(refusal.event.value),
                reason=refusal.reason,
            )
        lost = await publish(self.publisher, letters)
        letter_of = {id(letter): r.event for letter, r in zip(letters, refused, strict=True)}
        unplaced: Unplaced = set()
        for refusal in lost:
            event = letter_of[id(refusal.event)]
            log.error(
                "the dead letter was refused too: the event is on no topic, and is not "
                "remembered, so the next reading of its window meets it again",
                session_id=event.session_id,
                topic=refusal.event.topic,
                reason=refusal.reason,
            )
            if event.session_id is not None:
                unplaced.add((_stream_of(event), event.session_id))
        return len(letters) - len(lost), unplaced

    def _count(
        self, stream: str, counts: Delivered, events: list[Event], refused: list[Refusal]
    ) -> None:
        partner = str(self.partner_id)
        metrics.PAGES.labels(partner, stream).inc()
        metrics.SESSIONS.labels(partner, stream).inc(counts.records)
        metrics.DUPLICATES.labels(partner, stream).inc(counts.duplicates)
        metrics.DEAD_LETTERS.labels(partner, stream).inc(counts.dead_letters)
        not_produced = {id(r.event) for r in refused}
        produced = Counter(e.topic for e in events if id(e) not in not_produced)
        for topic, number in produced.items():
            metrics.EVENTS.labels(partner, topic).inc(number)

    def _started_for(self, completed: list[tuple[SourceRecord, Event]]) -> list[Event]:
        if not self.started_enabled or not completed:
            return []
        seen_started = self.state.already_emitted(
            self.partner_id, "started", [e.session_id for _, e in completed if e.session_id]
        )
        return [
            self.builder.started(record, observed_active=False)
            for record, event in completed
            if event.session_id not in seen_started
        ]


def _stream_of(event: Event) -> str:
    """The stream a session event belongs to, from its type (``...completed``)."""
    return dict(event.headers).get("ce_type", b"").decode().removeprefix(CE_TYPE_PREFIX)


def _without(emitted: Mapping[str, Memo], unplaced: Unplaced) -> dict[str, Memo]:
    """What is remembered of ``emitted``, less the events placed on no topic (almost always
    none: then the same lists, not a copy of every page's ids)."""
    if not unplaced:
        return dict(emitted)
    return {
        stream: [(sid, start) for sid, start in memo if (stream, sid) not in unplaced]
        for stream, memo in emitted.items()
    }


def _memo(events: Iterable[Event]) -> Memo:
    """What the state keeps of emitted events: the session id and its start."""
    return [
        (e.session_id, e.start_time)
        for e in events
        if e.session_id is not None and e.start_time is not None
    ]
