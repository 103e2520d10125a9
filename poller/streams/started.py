"""The started stream: open sessions (PartnerActiveSessions) -> ``session.started``.

Each tick lists the sessions open now whose start lies inside the horizon (the one scan,
``streams/scan.py``); each session id is emitted once. A session that opens and ends between
two ticks gets its started event from the completed stream instead, just before its completed
event. A complete listing also tells the completed stream which sessions just ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from poller.errors import UnknownOperation
from poller.glance.records import SessionPage
from poller.logs import get_logger
from poller.settings import GlanceSettings, ReconcileSettings, StartedStreamSettings
from poller.streams.feed import Delivered, memory_key
from poller.streams.names import STARTED
from poller.streams.open_sessions import OpenSessions
from poller.streams.scan import Scanner
from poller.window import Window

log = get_logger(__name__)


@dataclass
class StartedSummary:
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    behind: bool = False

    @property
    def quiet(self) -> bool:
        return self.delivered.records == 0

    def as_log(self) -> dict[str, object]:
        return {"pages": self.pages, **self.delivered.as_log()}


class StartedStream:
    name = STARTED
    uses_state = True

    def __init__(
        self,
        scanner: Scanner,
        glance: GlanceSettings,
        settings: StartedStreamSettings,
        reconcile: ReconcileSettings,
        open_sessions: OpenSessions | None = None,
    ) -> None:
        self._scanner = scanner
        self._client = scanner.client
        self._open_sessions = open_sessions
        self._settings = settings
        self._lookback = timedelta(seconds=min(reconcile.horizon, glance.max_window))
        self.partner_id = scanner.feed.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def available(self) -> bool:
        """Whether upstream knows the operation (its name is unconfirmed): one tiny call."""
        now = (await self._client.server_now()).replace(microsecond=0)
        window = Window(now - timedelta(seconds=1), now)
        pages = self._client.session_pages(self._settings.operation, window, 1)
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
        open_now: dict[int, datetime] = {}

        def seen(page: SessionPage) -> None:
            for record in page.records:
                start = record.start()
                if start is not None:
                    open_now[memory_key(record)] = start

        limit = self._settings.max_pages_per_tick
        outcome = await self._scanner.listing(
            self._settings.operation, STARTED, window, max_pages=limit, on_read=seen
        )
        if outcome.cut_short:
            log.warning(
                "the open sessions' listing reached started.max_pages_per_tick; it is read "
                "again at the next tick",
                pages=outcome.pages,
            )
        if self._open_sessions is not None:
            if outcome.complete and outcome.served_at is not None:
                self._open_sessions.record(now, outcome.served_at.replace(microsecond=0), open_now)
            else:
                self._open_sessions.forget()
        return StartedSummary(delivered=outcome.delivered, pages=outcome.pages)
