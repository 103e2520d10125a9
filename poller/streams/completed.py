"""The completed stream's fast scan: PartnerCompletedSessions -> ``session.completed``.

Each tick scans ``[scanned_until - overlap, now)`` in windows of at most 31 days, page by page
(the one scan, ``streams/scan.py``), and then fetches the starts of the sessions the started
stream saw leave its listing, so a long session is delivered as soon as it ends. The part
before ``scanned_until`` is re-read only from the oldest session that was still open, and not
at all when nothing completed there since (``streams/overlap.py``). Sessions that end long
after the scan covered their start, unseen, are the reconcile sweep's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from poller import metrics
from poller.cursor import Cursor
from poller.errors import CursorInFuture
from poller.glance.client import COMPLETED_SESSIONS
from poller.logs import get_logger
from poller.settings import CompletedStreamSettings, GlanceSettings
from poller.streams.feed import Delivered
from poller.streams.names import COMPLETED, RECONCILE
from poller.streams.open_sessions import OpenSessions
from poller.streams.overlap import OverlapGuide
from poller.streams.scan import Scanner
from poller.window import Window

log = get_logger(__name__)


@dataclass
class ScanSummary:
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    windows: list[Window] = field(default_factory=list)
    scanned_until: datetime | None = None
    departed_fetched: int = 0
    # Whether the part before the previous scan's end was re-read (not when nothing there
    # could have completed since).
    reread: bool = False
    behind: bool = False

    @property
    def quiet(self) -> bool:
        return self.delivered.records == 0 and self.departed_fetched == 0

    def as_log(self) -> dict[str, object]:
        return {
            "pages": self.pages,
            **self.delivered.as_log(),
            "window_start": self.windows[0].start.isoformat() if self.windows else None,
            "window_end": self.windows[-1].end.isoformat() if self.windows else None,
            "scanned_until": self.scanned_until.isoformat() if self.scanned_until else None,
            "departed_fetched": self.departed_fetched,
            "reread": self.reread,
            "behind": self.behind,
        }


class CompletedStream:
    name = COMPLETED
    uses_state = True

    def __init__(
        self,
        scanner: Scanner,
        glance: GlanceSettings,
        settings: CompletedStreamSettings,
        open_sessions: OpenSessions | None = None,
        open_operation: str | None = None,
    ) -> None:
        self._scanner = scanner
        self._feed = scanner.feed
        self._open_sessions = open_sessions
        self._guide = OverlapGuide(scanner.client, scanner.feed.state, open_operation)
        self._max_window = timedelta(seconds=glance.max_window)
        self._tolerance = timedelta(seconds=glance.clock_tolerance)
        self._settings = settings
        self.partner_id = scanner.feed.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def tick(self) -> ScanSummary:
        """Scan up to upstream's now (resuming an interrupted scan first), page budget allowing."""
        state = self._feed.state
        stored = state.cursor(self.partner_id, COMPLETED)
        self._refuse_a_future(stored)
        # Ticks run at a fixed rate: the last answer's Date (whole seconds) can still be the
        # second this cursor ended on, and the tick would scan nothing; then ask again.
        later_than = stored.scanned_until if stored and not stored.in_window else None
        client = self._scanner.client
        now = (await client.server_now(later_than=later_than)).replace(microsecond=0)
        first_start: dict[str, Cursor] = {}
        if stored is None:
            # A first start: the feed begins here, and the sweep never reaches before it (said
            # with the first page's commit: nothing is written before an acknowledgement).
            origin = now - timedelta(seconds=self._settings.start_lookback)
            stored = Cursor(origin).begin(now, origin, self._max_window)
            first_start = {RECONCILE: Cursor(origin)}
        cursor = stored
        summary = ScanSummary(scanned_until=cursor.scanned_until)
        overlap = timedelta(seconds=self._settings.overlap)
        # Only a tick that starts between windows reads everything after the question.
        if not cursor.in_window and overlap:
            reach = min(overlap, self._max_window)
            await self._guide.ask_oldest_open(Window(now - reach, now))
        budget = self._settings.max_pages_per_tick
        while not self._scanner.stopping.is_set():
            if summary.pages >= budget:
                summary.behind = True
                break
            if not cursor.in_window:
                look_back = await self._narrowed(cursor, overlap, summary)
                cursor = cursor.begin(now, look_back, self._max_window)
            if cursor.done_by(now):
                break
            assert cursor.window is not None
            summary.windows.append(cursor.window)
            outcome = await self._scanner.scan(
                COMPLETED_SESSIONS,
                COMPLETED,
                cursor,
                COMPLETED,
                max_pages=budget - summary.pages,
                also=first_start,
            )
            summary.pages += outcome.pages
            summary.delivered.add(outcome.delivered)
            cursor = outcome.cursor
        reached_now = cursor.done_by(now)
        self._guide.scanned_to(cursor.scanned_until if reached_now else None)
        summary.scanned_until = cursor.scanned_until
        if not summary.behind:
            # What this tick's scan read (or, without one, what the next will) is covered.
            covered_from = summary.windows[0].start if summary.windows else cursor.scanned_until
            await self._fetch_departed(covered_from, summary)
        lag = (now - cursor.scanned_until).total_seconds()
        metrics.CURSOR_LAG.labels(str(self.partner_id), COMPLETED).set(max(0.0, lag))
        return summary

    def _refuse_a_future(self, stored: Cursor | None) -> None:
        """No cursor is committed beyond the host's now plus the tolerance; one found there
        (an older version, a hand-edited file) fails every tick, loudly, with the way out."""
        future = stored is not None and stored.scanned_until > datetime.now(UTC) + self._tolerance
        metrics.CURSOR_IN_FUTURE.labels(str(self.partner_id), COMPLETED).set(int(future))
        if future and stored is not None:
            raise CursorInFuture(self.partner_id, COMPLETED, stored.scanned_until.isoformat())

    async def _narrowed(self, cursor: Cursor, overlap: timedelta, summary: ScanSummary) -> datetime:
        """Where the next window starts: ``overlap`` before the cursor at most, only as far
        as the oldest session open at the previous scan when that is known, and at the cursor
        when upstream counts nothing new completed in between (asked once a tick)."""
        previous_end = cursor.scanned_until
        look_back = self._look_back_to(previous_end, overlap)
        if summary.windows or look_back >= previous_end:
            return look_back
        reread = Window(look_back, previous_end)
        if reread.end - reread.start <= self._max_window and await self._guide.nothing_new(reread):
            return previous_end
        summary.reread = True
        return look_back

    def _look_back_to(self, previous_end: datetime, overlap: timedelta) -> datetime:
        bounds = [previous_end - overlap]
        oldest_open = self._guide.look_back_to(previous_end)
        if oldest_open is not None:
            bounds.append(oldest_open)
        listed = self._open_sessions.look_back_to(previous_end) if self._open_sessions else None
        if listed is not None:
            # The started stream's listing runs apart from this scan: a second's margin for
            # upstream's whole-second clock.
            bounds.append(min(listed, previous_end) - timedelta(seconds=1))
        return min(max(bounds), previous_end)

    async def _fetch_departed(self, covered_from: datetime, summary: ScanSummary) -> None:
        """The starts of sessions that just left the open listing, before what this tick's
        scan covered: long sessions are delivered within a tick of their end."""
        sessions = self._open_sessions
        if sessions is None or not sessions.departed():
            return
        # Within the tick's page budget: a nextId that never ends must not hold the state.
        budget = self._settings.max_pages_per_tick
        for window in sessions.departed_windows(covered_from):
            if self._scanner.stopping.is_set() or budget <= 0:
                return
            outcome = await self._scanner.listing(
                COMPLETED_SESSIONS, COMPLETED, window, max_pages=budget
            )
            budget -= outcome.pages
            if outcome.cut_short:
                log.warning(
                    "a just-ended session's listing reached completed.max_pages_per_tick; it is "
                    "read again at the next tick, then left to the reconcile sweep",
                    window_start=window.start.isoformat(),
                    pages=outcome.pages,
                )
            summary.departed_fetched += 1
            summary.delivered.add(outcome.delivered)
        state = self._feed.state
        sessions.tried(state.already_emitted(self.partner_id, COMPLETED, sessions.departed()))
