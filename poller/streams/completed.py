"""The completed stream's fast scan: PartnerCompletedSessions -> ``session.completed``.

A scan covers ``[scanned_until - overlap, now)`` in windows of at most 31 days, page by
page. Each page is published and acknowledged before its cursor (window and next token)
and its ids are committed, so a crash re-emits at most the page in flight, never skips.
Sessions that end long after the scan covered their start are the reconcile sweep's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from poller import metrics
from poller.glance.client import COMPLETED_SESSIONS, GlanceClient
from poller.glance.paging import RepeatedPageToken, Window, split_window
from poller.logs import get_logger
from poller.settings import CompletedStreamSettings, GlanceSettings
from poller.state import Cursor, Scan, StateStore
from poller.streams.feed import Delivered, PartnerFeed
from poller.streams.open_sessions import OpenSessions

log = get_logger(__name__)
STREAM = "completed"


@dataclass
class ScanSummary:
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    windows: list[Window] = field(default_factory=list)
    scanned_until: datetime | None = None
    behind: bool = False

    def as_log(self) -> dict[str, object]:
        return {
            "pages": self.pages,
            **self.delivered.as_log(),
            "window_start": self.windows[0].start.isoformat() if self.windows else None,
            "window_end": self.windows[-1].end.isoformat() if self.windows else None,
            "scanned_until": self.scanned_until.isoformat() if self.scanned_until else None,
            "behind": self.behind,
        }


class CompletedStream:
    name = STREAM
    uses_state = True

    def __init__(
        self,
        client: GlanceClient,
        feed: PartnerFeed,
        state: StateStore,
        glance: GlanceSettings,
        settings: CompletedStreamSettings,
        stopping: asyncio.Event,
        open_sessions: OpenSessions | None = None,
    ) -> None:
        self._client = client
        self._feed = feed
        self._open_sessions = open_sessions
        self._state = state
        self._page_size = glance.page_size
        self._max_window = timedelta(seconds=glance.max_window)
        self._settings = settings
        self._stopping = stopping
        self.partner_id = client.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def tick(self) -> ScanSummary:
        """Scan up to upstream's now (resuming an interrupted scan first), page budget allowing."""
        stored = self._state.cursor(self.partner_id, STREAM)
        # Ticks run at a fixed rate: the last answer's Date (whole seconds) can still be the
        # second this cursor ended on, and the tick would scan nothing; then ask again.
        scanned_until = stored.scanned_until if stored and stored.scan is None else None
        now = (await self._client.server_now(later_than=scanned_until)).replace(microsecond=0)
        cursor = stored or Cursor(now - timedelta(seconds=self._settings.start_lookback))
        summary = ScanSummary(scanned_until=cursor.scanned_until)
        overlap = timedelta(seconds=self._settings.overlap)
        while not self._stopping.is_set():
            if summary.pages >= self._settings.max_pages_per_tick:
                summary.behind = True
                break
            if cursor.scan is None:
                if cursor.scanned_until >= now:
                    break
                span = Window(self._look_back_to(cursor.scanned_until, overlap), now)
                first = split_window(span, self._max_window)[0]
                cursor = Cursor(cursor.scanned_until, Scan(first, 0))
            cursor = await self._scan(cursor, summary)
        summary.scanned_until = cursor.scanned_until
        lag = (now - cursor.scanned_until).total_seconds()
        metrics.CURSOR_LAG.labels(str(self.partner_id), STREAM).set(max(0.0, lag))
        return summary

    def _look_back_to(self, previous_end: datetime, overlap: timedelta) -> datetime:
        """Where the next window starts: ``overlap`` before the cursor at most, and only as
        far as the oldest session open at the previous scan when a listing tells us."""
        farthest = previous_end - overlap
        bound = self._open_sessions.look_back_to(previous_end) if self._open_sessions else None
        if bound is None:
            return farthest
        return max(farthest, min(bound, previous_end) - timedelta(seconds=1))

    async def _scan(self, cursor: Cursor, summary: ScanSummary) -> Cursor:
        assert cursor.scan is not None
        window = cursor.scan.window
        summary.windows.append(window)
        pages = self._client.session_pages(
            COMPLETED_SESSIONS, window, self._page_size, cursor.scan.token
        )
        try:
            async for page in pages:
                summary.pages += 1
                if page.next_token == 0:
                    after = Cursor(max(cursor.scanned_until, window.end))
                else:
                    after = Cursor(cursor.scanned_until, Scan(window, page.next_token))
                summary.delivered.add(
                    await self._feed.deliver(
                        page.records, "completed", COMPLETED_SESSIONS, {STREAM: after}, window
                    )
                )
                cursor = after
                if self._stopping.is_set() or summary.pages >= self._settings.max_pages_per_tick:
                    break
        except RepeatedPageToken as exc:
            log.warning(
                "upstream repeated a page token; ending this window's scan early",
                next_id=exc.token,
                window_start=window.start.isoformat(),
                window_end=window.end.isoformat(),
            )
            cursor = Cursor(max(cursor.scanned_until, window.end))
            self._state.commit(self.partner_id, cursors={STREAM: cursor})
        finally:
            await pages.aclose()
        return cursor
