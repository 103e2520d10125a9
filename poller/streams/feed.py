"""One partner's path from upstream records to acknowledged, remembered events.

Every stream that emits session events goes through ``deliver``: drop what was already
emitted, build events (or dead letters), publish and await every acknowledgement, then
commit ids and cursors in one transaction. A session first seen already ended gets its
started event here, published and acknowledged before its completed event.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import orjson

from poller import metrics
from poller.errors import BadRecord
from poller.events import Event, EventBuilder, EventType
from poller.glance.dates import parse_returned, to_event
from poller.glance.paging import Window
from poller.glance.records import SourceRecord
from poller.publisher import Publication, Publisher
from poller.state import Cursor, StateStore


@dataclass
class Delivered:
    records: int = 0
    emitted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    # Started events published just before the completed one (never seen open).
    started_on_completion: int = 0

    def add(self, other: Delivered) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_log(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def record_id(record: SourceRecord) -> int | None:
    if record.native is not None:
        return record.native.id  # checked in Rust: a positive integer
    if record.session is not None:
        return record.session.id  # typed: a positive integer, and its raw is never decoded
    raw = record.raw
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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


class PartnerFeed:
    def __init__(
        self, partner_id: int, builder: EventBuilder, publisher: Publisher, state: StateStore
    ) -> None:
        self.partner_id = partner_id
        self._builder = builder
        self._publisher = publisher
        self._state = state
        # Off when the started stream is disabled or upstream lacks its operation.
        self.started_enabled = True

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
        this one as its ``in_flight`` (the ids it holds are not committed yet) and settle
        them in order."""
        counts = Delivered(records=len(records))
        keys = [memory_key(record) for record in records]
        already = self._state.already_emitted(self.partner_id, stream, keys)
        if in_flight is not None:
            already |= in_flight.keys
        fresh: list[tuple[SourceRecord, Event]] = []
        dead: list[Event] = []
        remembered: list[tuple[int, datetime]] = []
        for record, key in zip(records, keys, strict=True):
            if key in already:
                counts.duplicates += 1
                continue
            try:
                if stream == "completed":
                    event = self._builder.completed(record)
                else:
                    event = self._builder.started(record, observed_active=True)
            except BadRecord as exc:
                dead.append(self._builder.dead_letter(record, exc.reason, operation))
                # Remembered like an event: the same bad record is dead-lettered once.
                remembered.append((key, _start_of(record, listed_in)))
                already.add(key)
                continue
            already.add(key)
            fresh.append((record, event))
        started_first = self._started_for(fresh) if stream == "completed" else []
        if started_first:
            # Acknowledged before its completed event is even sent.
            await self._publisher.publish(started_first)
        events = [event for _, event in fresh] + dead
        publication = await self._publisher.send(events)
        remembered.extend(_memo(event for _, event in fresh))
        emitted: dict[str, list[tuple[int, datetime]]] = {stream: remembered}
        if started_first:
            emitted["started"] = _memo(started_first)
        counts.emitted = len(fresh)
        counts.dead_letters = len(dead)
        counts.started_on_completion = len(started_first)
        return Sending(stream, publication, cursors, emitted, counts, events + started_first)

    async def settle(self, sending: Sending) -> Delivered:
        """Wait for every acknowledgement of ``sending``, then commit its ids and cursors."""
        await sending.publication.acknowledged()
        self._state.commit(self.partner_id, cursors=sending.cursors, emitted=sending.emitted)
        self._count(sending.stream, sending.counts, sending.events)
        return sending.counts

    def _count(self, stream: str, counts: Delivered, events: list[Event]) -> None:
        partner = str(self.partner_id)
        metrics.PAGES.labels(partner, stream).inc()
        metrics.SESSIONS.labels(partner, stream).inc(counts.records)
        metrics.DUPLICATES.labels(partner, stream).inc(counts.duplicates)
        metrics.DEAD_LETTERS.labels(partner, stream).inc(counts.dead_letters)
        for topic, number in Counter(e.topic for e in events).items():
            metrics.EVENTS.labels(partner, topic).inc(number)

    def _started_for(self, completed: list[tuple[SourceRecord, Event]]) -> list[Event]:
        if not self.started_enabled or not completed:
            return []
        seen_started = self._state.already_emitted(
            self.partner_id, "started", [e.session_id for _, e in completed if e.session_id]
        )
        return [
            self._builder.started(record, observed_active=False)
            for record, event in completed
            if event.session_id not in seen_started
        ]


@dataclass
class Sending:
    """A page's events handed to Kafka; ``PartnerFeed.settle`` commits them once all are
    acknowledged."""

    stream: str
    publication: Publication
    cursors: Mapping[str, Cursor] | None
    emitted: dict[str, list[tuple[int, datetime]]]
    counts: Delivered
    events: list[Event]

    @property
    def keys(self) -> set[int]:
        return {key for key, _ in self.emitted[self.stream]}


def _memo(events: Iterable[Event]) -> list[tuple[int, datetime]]:
    """What the state keeps of emitted events: the session id and its start."""
    return [
        (e.session_id, e.start_time)
        for e in events
        if e.session_id is not None and e.start_time is not None
    ]
