"""How far back the completed stream's fast scan re-reads, and whether it must at all.

Upstream lists a completed session by its start, and only once it has ended: a session that
ends after a scan covered its start is found only by reading that start again. Re-reading the
whole overlap on every tick reads each of its sessions again tick after tick (at 50 ends a
second and a 5-minute overlap, about 50 records read per session delivered). Two cheap
questions, asked before the scan reads anything, narrow it:

- **The oldest session still open** (the open-sessions listing, one record: upstream lists by
  ascending id, and ids are given as sessions are created). A session this scan does not see,
  because it has not ended yet, was open when the question was asked, so it started no
  earlier: the next tick re-reads only from there. With nothing open, it re-reads nothing.
- **Whether anything completed there since** (one PartnerSessionCounts call): when upstream
  counts no more completed sessions in the part to re-read than the feed has emitted for it,
  the re-read is skipped.

Neither is asked where nothing was emitted yet: re-reading there repeats nothing, and the
listing that reads the new part reads it in the same call (an idle partner costs one call a
tick). Any answer missing (the operation unknown, a failed call, a scan cut short or resumed)
falls back to the full overlap. If upstream ever gave ids out of start order, a session could be
left to the reconcile sweep, which stays the safety net: late, never lost.
"""

from __future__ import annotations

from datetime import datetime

from poller.errors import RetriableUpstreamError, UnknownOperation
from poller.glance.client import GlanceClient
from poller.glance.records import total_count
from poller.logs import get_logger
from poller.state import StateStore
from poller.streams.names import COMPLETED
from poller.window import Window

log = get_logger(__name__)


class OverlapGuide:
    """One partner's answers to the two questions, kept in memory between ticks."""

    def __init__(self, client: GlanceClient, state: StateStore, open_operation: str | None) -> None:
        self._client = client
        self._state = state
        self._open_operation = open_operation
        # The start of the oldest session open before this tick's scan read (None: unknown).
        self._asked: datetime | None = None
        # (scan end, bound): sessions starting before ``bound`` were all read by the scan
        # that ended at ``scan end``.
        self._known: tuple[datetime, datetime] | None = None

    async def ask_oldest_open(self, window: Window) -> None:
        """Before the scan reads: the start of the oldest session open in ``window`` (its
        end when none is)."""
        self._asked = None
        # Nothing emitted there: the next tick re-reads it all at no waste.
        if self._open_operation is None or not self._emitted(window):
            return
        pages = self._client.session_pages(self._open_operation, window, 1)
        try:
            page = await anext(pages, None)
        except UnknownOperation:
            log.info(
                "upstream does not know the open-sessions operation: the fast scan re-reads "
                "its whole overlap",
                operation=self._open_operation,
            )
            self._open_operation = None
            return
        except RetriableUpstreamError as exc:
            log.info("the oldest open session is unknown this tick", reason=str(exc))
            return
        finally:
            await pages.aclose()
        starts = [start for r in (page.records if page else []) if (start := r.start())]
        if page is not None and page.records and len(starts) != len(page.records):
            return  # an open session without a readable start: no bound
        self._asked = min([*starts, window.end])

    def scanned_to(self, scan_end: datetime | None) -> None:
        """This tick's scan read everything up to ``scan_end`` after the question (None: it
        did not, and the next tick must not rely on it)."""
        if scan_end is None or self._asked is None:
            self._known = None
        else:
            self._known = (scan_end, min(self._asked, scan_end))
        self._asked = None

    def look_back_to(self, previous_scan_end: datetime) -> datetime | None:
        """Where the oldest session the previous scan could not see started, if known."""
        if self._known is None or self._known[0] != previous_scan_end:
            return None
        return self._known[1]

    async def nothing_new(self, window: Window) -> bool:
        """Whether upstream counts no more completed sessions in ``window`` than were
        emitted (a failed count: assume something is new; nothing emitted there: not worth
        the call, re-reading repeats nothing)."""
        emitted = self._emitted(window)
        if not emitted:
            return False
        try:
            upstream = await self._client.session_counts(window, status="C", shape=total_count)
        except RetriableUpstreamError as exc:
            log.info("the overlap's count is unknown this tick", reason=str(exc))
            return False
        return upstream <= emitted

    def _emitted(self, window: Window) -> int:
        """How many sessions re-reading ``window`` would read again."""
        return self._state.count_emitted(self._client.partner_id, COMPLETED, window)
