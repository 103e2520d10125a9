"""The started stream: open sessions (PartnerActiveSessions) -> ``session.started``.

Each tick lists the sessions open now whose start lies inside the horizon; each session id
is emitted once. A session that opens and ends between two ticks gets its started event
from the completed stream instead, just before its completed event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from poller.errors import UnknownOperation
from poller.glance.client import GlanceClient
from poller.glance.paging import RepeatedPageToken, Window
from poller.glance.records import SourceRecord
from poller.logs import get_logger
from poller.settings import GlanceSettings, ReconcileSettings, StartedStreamSettings
from poller.streams.feed import Delivered, PartnerFeed
from poller.streams.open_sessions import OpenSessions

log = get_logger(__name__)


@dataclass
class StartedSummary:
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    behind: bool = False

    def as_log(self) -> dict[str, object]:
        return {"pages": self.pages, **self.delivered.as_log()}


class StartedStream:
    name = "started"
    uses_state = True

    def __init__(
        self,
        client: GlanceClient,
        feed: PartnerFeed,
        glance: GlanceSettings,
        settings: StartedStreamSettings,
        reconcile: ReconcileSettings,
        stopping: asyncio.Event,
        open_sessions: OpenSessions | None = None,
    ) -> None:
        self._client = client
        self._feed = feed
        self._open_sessions = open_sessions
        self._page_size = glance.page_size
        self._settings = settings
        self._lookback = timedelta(seconds=min(reconcile.horizon, glance.max_window))
        self._stopping = stopping
        self.partner_id = client.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def available(self) -> bool:
        """Whether upstream knows the operation (its name is unconfirmed): one tiny call."""
        now = (await self._client.server_now()).replace(microsecond=0)
        pages = self._client.session_pages(
            self._settings.operation, Window(now - timedelta(seconds=1), now), 1
        )
        try:
            await anext(pages)
        except UnknownOperation:
            return False
        except StopAsyncIteration:
            pass
        finally:
            await pages.aclose()
        return True

    async def tick(self) -> StartedSummary:
        now = (await self._client.server_now()).replace(microsecond=0)
        window = Window(now - self._lookback, now + timedelta(seconds=1))
        operation = self._settings.operation
        summary = StartedSummary()
        oldest: datetime | None = None
        # When upstream served the last page: the listing is true from then on.
        served_at: datetime | None = None
        complete = False
        pages = self._client.session_pages(operation, window, self._page_size)
        try:
            async for page in pages:
                summary.pages += 1
                summary.delivered.add(
                    await self._feed.deliver(page.records, "started", operation, listed_in=window)
                )
                oldest = _earliest_start(page.records, oldest)
                served_at = page.served_at
                if self._stopping.is_set():
                    break
            else:
                complete = True
        except RepeatedPageToken as exc:
            log.warning("upstream repeated a page token; this tick ends early", next_id=exc.token)
        finally:
            await pages.aclose()
        if self._open_sessions is not None:
            if complete and served_at is not None:
                self._open_sessions.record(now, served_at.replace(microsecond=0), oldest)
            else:
                self._open_sessions.forget()
        return summary


def _earliest_start(records: list[SourceRecord], earliest: datetime | None) -> datetime | None:
    for record in records:
        start = record.start()
        # A record without a readable start cannot narrow anything.
        if start is not None and (earliest is None or start < earliest):
            earliest = start
    return earliest
