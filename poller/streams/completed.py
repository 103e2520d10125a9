"""The completed stream: PartnerCompletedSessions -> ``session.completed`` events.

A scan covers ``[scanned_until - overlap, now)`` in windows of at most 31 days, page by
page. Each page is published and acknowledged before its cursor and its ids are
committed, so a crash re-emits at most the page in flight (same event ids), never skips.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from poller.errors import BadRecord
from poller.events import Event, EventBuilder
from poller.glance.client import COMPLETED_SESSIONS, GlanceClient
from poller.glance.paging import RepeatedPageToken, Window, split_window
from poller.glance.records import SessionPage, SourceRecord
from poller.logs import get_logger
from poller.publisher import Publisher
from poller.settings import CompletedStreamSettings, GlanceSettings
from poller.state import Cursor, Scan, StateStore

log = get_logger(__name__)
STREAM = "completed"


@dataclass
class TickSummary:
    pages: int = 0
    records: int = 0
    emitted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    windows: list[Window] = field(default_factory=list)
    scanned_until: datetime | None = None
    # A full page came back last: more is waiting upstream.
    behind: bool = False

    def as_log(self) -> dict[str, object]:
        return {
            "pages": self.pages,
            "records": self.records,
            "emitted": self.emitted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "window_start": self.windows[0].start.isoformat() if self.windows else None,
            "window_end": self.windows[-1].end.isoformat() if self.windows else None,
            "scanned_until": self.scanned_until.isoformat() if self.scanned_until else None,
        }


def _record_id(record: SourceRecord) -> int | None:
    raw = record.raw
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class CompletedStream:
    name = STREAM

    def __init__(
        self,
        client: GlanceClient,
        builder: EventBuilder,
        publisher: Publisher,
        state: StateStore,
        glance: GlanceSettings,
        settings: CompletedStreamSettings,
        stopping: asyncio.Event,
    ) -> None:
        self._client = client
        self._builder = builder
        self._publisher = publisher
        self._state = state
        self._page_size = glance.page_size
        self._max_window = timedelta(seconds=glance.max_window)
        self._settings = settings
        self._stopping = stopping
        self.partner_id = client.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    def _initial_cursor(self, now: datetime) -> Cursor:
        return Cursor(scanned_until=now - timedelta(seconds=self._settings.start_lookback))

    async def tick(self) -> TickSummary:
        """Scan up to upstream's now (resuming an interrupted scan first)."""
        now = (await self._client.server_now()).replace(microsecond=0)
        cursor = self._state.cursor(self.partner_id, STREAM) or self._initial_cursor(now)
        summary = TickSummary(scanned_until=cursor.scanned_until)
        overlap = timedelta(seconds=self._settings.overlap)
        while not self._stopping.is_set():
            if cursor.scan is None:
                if cursor.scanned_until >= now:
                    break
                span = Window(cursor.scanned_until - overlap, now)
                cursor = Cursor(
                    cursor.scanned_until, Scan(split_window(span, self._max_window)[0], 0)
                )
            cursor = await self._scan(cursor, summary)
        summary.scanned_until = cursor.scanned_until
        return summary

    async def _scan(self, cursor: Cursor, summary: TickSummary) -> Cursor:
        assert cursor.scan is not None
        window = cursor.scan.window
        summary.windows.append(window)
        pages = self._client.session_pages(
            COMPLETED_SESSIONS, window, self._page_size, cursor.scan.token
        )
        try:
            async for page in pages:
                cursor = await self._deliver(page, window, cursor, summary)
                if self._stopping.is_set():
                    break
        except RepeatedPageToken as exc:
            log.warning(
                "upstream repeated a page token; ending this window's scan early",
                next_id=exc.token,
                window_start=window.start.isoformat(),
                window_end=window.end.isoformat(),
            )
            cursor = Cursor(max(cursor.scanned_until, window.end))
            self._state.commit(self.partner_id, STREAM, cursor)
        finally:
            await pages.aclose()
        return cursor

    async def _deliver(
        self, page: SessionPage, window: Window, cursor: Cursor, summary: TickSummary
    ) -> Cursor:
        summary.pages += 1
        summary.records += len(page.records)
        summary.behind = len(page.records) >= self._page_size
        candidates = [i for i in map(_record_id, page.records) if i is not None]
        already = self._state.already_emitted(self.partner_id, STREAM, candidates)
        fresh: list[Event] = []
        dead: list[Event] = []
        for record in page.records:
            session_id = _record_id(record)
            if session_id is not None and session_id in already:
                summary.duplicates += 1
                continue
            try:
                event = self._builder.session_event(record, "completed")
            except BadRecord as exc:
                dead.append(self._builder.dead_letter(record, exc.reason, COMPLETED_SESSIONS))
                continue
            if session_id is not None:
                # The same id twice in one page is emitted once.
                already.add(session_id)
            fresh.append(event)
        await self._publisher.publish(fresh + dead)
        if page.next_token == 0:
            next_cursor = Cursor(max(cursor.scanned_until, window.end))
        else:
            next_cursor = Cursor(cursor.scanned_until, Scan(window, page.next_token))
        self._state.commit(
            self.partner_id,
            STREAM,
            next_cursor,
            [(e.session_id, e.start_time) for e in fresh if e.session_id and e.start_time],
        )
        summary.emitted += len(fresh)
        summary.dead_letters += len(dead)
        return next_cursor
