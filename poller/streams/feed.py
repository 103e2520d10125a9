"""One partner's path from upstream records to acknowledged, remembered events.

Every stream that emits session events goes through ``deliver``: drop what was already
emitted, build events (or dead letters), publish and await every acknowledgement, then
commit ids and cursors in one transaction. A session first seen already ended gets its
started event here, published and acknowledged before its completed event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from poller import metrics
from poller.errors import BadRecord
from poller.events import Event, EventBuilder, EventType
from poller.glance.dates import parse_returned
from poller.glance.records import SourceRecord
from poller.publisher import Publisher
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
    raw = record.raw
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _start_of(record: SourceRecord) -> datetime:
    raw = record.raw
    try:
        return parse_returned(raw.get("startTime") if isinstance(raw, dict) else None)
    except ValueError:
        # Unknown start: remembered as of now, so the id leaves the state after the horizon.
        return datetime.now(UTC)


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
    ) -> Delivered:
        counts = Delivered(records=len(records))
        already = self._state.already_emitted(
            self.partner_id, stream, [i for i in map(record_id, records) if i is not None]
        )
        fresh: list[tuple[SourceRecord, Event]] = []
        dead: list[Event] = []
        remembered: list[tuple[int, datetime]] = []
        for record in records:
            session_id = record_id(record)
            if session_id is not None and session_id in already:
                counts.duplicates += 1
                continue
            try:
                if stream == "completed":
                    event = self._builder.completed(record)
                else:
                    event = self._builder.started(record, observed_active=True)
            except BadRecord as exc:
                dead.append(self._builder.dead_letter(record, exc.reason, operation))
                if session_id is not None:
                    # Remembered like an event: the same bad record is dead-lettered once.
                    remembered.append((session_id, _start_of(record)))
                    already.add(session_id)
                continue
            if session_id is not None:
                already.add(session_id)
            fresh.append((record, event))
        started_first = self._started_for(fresh) if stream == "completed" else []
        if started_first:
            await self._publisher.publish(started_first)
        await self._publisher.publish([event for _, event in fresh] + dead)
        remembered.extend(_memo(event for _, event in fresh))
        emitted: dict[str, list[tuple[int, datetime]]] = {stream: remembered}
        if started_first:
            emitted["started"] = _memo(started_first)
        self._state.commit(self.partner_id, cursors=cursors, emitted=emitted)
        counts.emitted = len(fresh)
        counts.dead_letters = len(dead)
        counts.started_on_completion = len(started_first)
        self._count(stream, counts, [e for _, e in fresh] + dead + started_first)
        return counts

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


def _memo(events: Iterable[Event]) -> list[tuple[int, datetime]]:
    """What the state keeps of emitted events: the session id and its start."""
    return [
        (e.session_id, e.start_time)
        for e in events
        if e.session_id is not None and e.start_time is not None
    ]
