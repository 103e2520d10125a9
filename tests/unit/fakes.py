"""Fakes behind the daemon's own seams, for fast tests: an in-memory Kafka publisher and an
in-memory upstream with the listing's paging rules (sessions by id, ``nextId`` tokens,
only ended sessions, start-time windows)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from poller.errors import PublishFailed, UnknownOperation
from poller.events import Event
from poller.glance.paging import Paginator
from poller.glance.records import SessionPage, SourceRecord
from poller.publisher import Publication, Refusal
from poller.window import Window

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class MemoryPublication:
    def __init__(self, publisher: MemoryPublisher, events: list[Event]) -> None:
        self._publisher = publisher
        self._events = events

    def answered(self) -> bool:
        return self._publisher.gate.is_set()

    async def acknowledged(self) -> list[Refusal]:
        publisher = self._publisher
        await publisher.gate.wait()
        for _ in range(publisher.ack_turns):
            await asyncio.sleep(0)
        publisher.ack_calls += 1
        if publisher.ack_calls in publisher.fail_ack_calls:
            raise PublishFailed("timeout", f"{len(self._events)} event(s) not acknowledged")
        refused = [Refusal(e, "too large") for e in self._events if not publisher.takes(e)]
        publisher.acknowledged.extend(e for e in self._events if publisher.takes(e))
        publisher.log.append(("acked", len(self._events)))
        return refused


class MemoryPublisher:
    """Kafka in memory: what was handed over, and what was acknowledged, in order.
    ``fail_ack_calls`` makes those acknowledgements (1-based) fail; ``gate`` holds them;
    each takes ``ack_turns`` turns of the event loop (others run meanwhile)."""

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self.max_event_bytes = max_event_bytes
        self.handed: list[Event] = []
        self.acknowledged: list[Event] = []
        self.log: list[tuple[str, int]] = []
        self.fail_ack_calls: set[int] = set()
        self.ack_calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.ack_turns = 0
        # A topic's own max.message.bytes, below the producer's.
        self.topic_limits: dict[str, int] = {}

    def takes(self, event: Event) -> bool:
        return len(event.value) <= self.topic_limits.get(event.topic, self.max_event_bytes)

    async def send(self, events: Sequence[Event]) -> Publication:
        self.handed.extend(events)
        self.log.append(("sent", len(events)))
        return MemoryPublication(self, list(events))

    async def stop(self, grace_seconds: float) -> None:
        return None

    def session_ids(self, topic: str) -> list[int]:
        return [int(e.key) for e in self.acknowledged if e.topic == topic and e.key is not None]


@dataclass
class Session:
    id: int
    start: datetime
    duration: int | None  # None: still open
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "C",
            "status": "C" if self.duration is not None else "A",
            "startTime": self.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration": self.duration or 0,
            "guests": [],
            **self.extra,
        }


class MemoryUpstream:
    """The client's interface over sessions held in memory. ``now`` is upstream's clock."""

    partner_id = 1

    def __init__(self, sessions: list[Session], now: datetime, page_size: int = 3) -> None:
        self.sessions = sessions
        self.now = now
        self.page_size = page_size
        self.calls: list[tuple[str, Window, int]] = []
        self.on_page: Callable[[SessionPage], None] | None = None
        self.operations = {"PartnerCompletedSessions", "PartnerActiveSessions"}

    async def server_now(
        self, max_age: float = 1.0, *, later_than: datetime | None = None
    ) -> datetime:
        return self.now

    def _listed(self, operation: str, window: Window) -> list[Session]:
        if operation not in self.operations:
            raise UnknownOperation(operation)
        ended = operation == "PartnerCompletedSessions"
        return sorted(
            (
                s
                for s in self.sessions
                if window.start <= s.start < window.end
                and (s.duration is not None and s.start + timedelta(seconds=s.duration) <= self.now)
                == ended
            ),
            key=lambda s: s.id,
        )

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        paginator = Paginator(start_token)
        while not paginator.finished:
            token = paginator.token
            self.calls.append((operation, window, token))
            listed = [s for s in self._listed(operation, window) if s.id > token]
            size = min(page_size, self.page_size)
            chunk = listed[:size]
            more = len(listed) > size
            next_token = chunk[-1].id if more else 0
            records = [SourceRecord("agent", "puid", s.record()) for s in chunk]
            page = SessionPage(token, next_token, records, served_at=self.now)
            paginator.advance(next_token)
            yield page

    async def session_counts(
        self, window: Window, *, status: str, kind: str = "", shape: Any = None
    ) -> Any:
        self.calls.append(("PartnerSessionCounts", window, 0))
        operation = "PartnerCompletedSessions" if status == "C" else "PartnerActiveSessions"
        rows = [{"type": "C", "status": status, "count": len(self._listed(operation, window))}]
        return shape(rows) if shape else rows
