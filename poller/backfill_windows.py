"""A backfill's range as windows fetched at once, each paged and committed under its own cursor.

**The cut** gives a window per ``PAGES_PER_WINDOW`` pages of sessions in the range (by
upstream's count), at least one, and at most ``WINDOWS_PER_CALL`` per call allowed at once
(``backfill.concurrency``), enough to keep every call busy to the end: every window ends with a
page that is not full, so a window must hold several pages for the calls to stay full, and a
sparse range is not read in a thousand near-empty calls. The windows are whole weeks, 3 or 2
days, days, 12, 6, 3 or 1 h, 30, 15, 5 or 1 min, the longest that still gives that many (never
longer than ``glance.max_window``), aligned on multiples of their length (the first and last may
be partial). The same command, with the same concurrency, resumes the same windows.

**The cursors.** Each window is paged by ``nextId`` with the one scan and committed page by
page under its own cursor, ``<range cursor>#<window start>/<window end>``: named after the
window, so a cut that changed meanwhile (upstream's count, the concurrency, ``glance.max_window``)
finds none for its new windows and reads them again (their sessions' ids are remembered, so
nothing is sent twice). The range's own cursor (``<range cursor>``) holds how far every window
is done without a gap: nothing before it is read again, and once it reaches the range's end the
backfill is done.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from poller.cursor import Cursor
from poller.glance.client import COMPLETED_SESSIONS
from poller.glance.dates import to_request
from poller.limiter import ConcurrencyLimiter
from poller.logs import get_logger
from poller.streams.feed import Delivered
from poller.streams.names import COMPLETED
from poller.streams.scan import Scanner
from poller.window import Window, buckets, split_window

log = get_logger(__name__)
WINDOWS_PER_CALL = 4
PAGES_PER_WINDOW = 8
STEPS = tuple(
    timedelta(minutes=minutes)
    for minutes in (7 * 1440, 3 * 1440, 2 * 1440, 1440, 720, 360, 180, 60, 30, 15, 5, 1)
)


def cut(span: Window, max_window: timedelta, pages: int, concurrency: int) -> list[Window]:
    """``span`` in windows: one per ``PAGES_PER_WINDOW`` of the ``pages`` its sessions fill,
    up to ``WINDOWS_PER_CALL`` x ``concurrency``, more when even the longest step allowed
    gives more."""
    steps = [step for step in STEPS if step <= max_window]
    if not steps:
        return split_window(span, max_window)
    wanted = max(1, min(-(-pages // PAGES_PER_WINDOW), WINDOWS_PER_CALL * concurrency))
    step = next((s for s in steps if span.span / s >= wanted), steps[-1])
    return buckets(span, step)


@dataclass(frozen=True)
class Flight:
    """What the progress shows: windows done, those being fetched, calls allowed at once."""

    windows: int
    done: int
    in_flight: tuple[str, ...]
    concurrency: int
    window_finished: bool = False


OnProgress = Callable[[int, Flight], None]


@dataclass
class Outcome:
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    failure: BaseException | None = None


class RangeWindows:
    def __init__(self, scanner: Scanner, range_stream: str, span: Window) -> None:
        self._scanner = scanner
        self._feed = scanner.feed
        self._stream = range_stream
        self._span = span
        self.windows: list[Window] = []
        stored = self._feed.state.cursor(self._feed.partner_id, range_stream)
        # An interrupted range of an older version (one cursor for the range) counts up to
        # its start; what it was paging is read again, its ids already remembered.
        self._watermark = stored.scanned_until if stored is not None else span.start
        self._finished: set[int] = set()
        # Something of this range was done before: this run resumes it.
        self.resumed = stored is not None

    def stream(self, index: int) -> str:
        """Window ``index``'s cursor, named after the window itself: a cursor of another cut
        can never pass for it (a finished cursor no longer says which window it finished)."""
        window = self.windows[index]
        return f"{self._stream}#{to_request(window.start)}/{to_request(window.end)}"

    def complete(self) -> bool:
        return self._watermark >= self._span.end

    def pending(self, windows: list[Window]) -> list[tuple[int, Cursor]]:
        """The range cut in ``windows``: those still to fetch, each with its cursor."""
        state, partner = self._feed.state, self._feed.partner_id
        self.windows = windows
        self._finished = {i for i, w in enumerate(windows) if w.end <= self._watermark}
        left: list[tuple[int, Cursor]] = []
        for index, window in enumerate(self.windows):
            if index in self._finished:
                continue
            cursor = state.cursor(partner, self.stream(index))
            self.resumed = self.resumed or cursor is not None
            if cursor is not None and cursor.window is None and cursor.done_by(window.end):
                self._finish(index)
            elif cursor is not None and cursor.window == window:
                left.append((index, cursor))
            else:
                left.append((index, Cursor(window.start, window)))
        return left

    def _finish(self, index: int) -> None:
        """Window ``index`` is done: the range's cursor moves over every window done in a row."""
        if index in self._finished:
            return
        self._finished.add(index)
        watermark = self._watermark
        for i, window in enumerate(self.windows):
            if i not in self._finished:
                break
            watermark = max(watermark, window.end)
        if watermark > self._watermark:
            self._watermark = watermark
            self._feed.commit(cursors={self._stream: Cursor(watermark)})

    async def fetch(
        self,
        pending: list[tuple[int, Cursor]],
        concurrency: int,
        limiter: ConcurrencyLimiter,
        on_progress: OnProgress,
    ) -> Outcome:
        """The ``pending`` windows, ``concurrency`` at a time, until done, stopped or failed: a
        window that fails stops the others after their page in flight (``failure`` says why)."""
        queue = deque(pending)
        outcome = Outcome()
        flying: dict[int, Window] = {}
        stopping = self._scanner.stopping

        def flight(finished: bool) -> Flight:
            starts = tuple(to_request(flying[i].start) for i in sorted(flying))
            total = len(self.windows)
            return Flight(total, len(self._finished), starts, limiter.limit, finished)

        async def worker() -> None:
            while queue and not stopping.is_set():
                index, cursor = queue.popleft()
                flying[index] = self.windows[index]
                try:
                    await self._window(index, cursor, outcome, flight, on_progress)
                except Exception as exc:
                    outcome.failure = outcome.failure or exc
                    stopping.set()  # the others finish their page in flight and commit it
                    return
                finally:
                    del flying[index]

        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(queue))):
                group.create_task(worker())
        return outcome

    async def _window(
        self,
        index: int,
        cursor: Cursor,
        outcome: Outcome,
        flight: Callable[[bool], Flight],
        on_progress: OnProgress,
    ) -> None:
        window = self.windows[index]
        log.info(
            "backfill window",
            window=index,
            window_start=window.start.isoformat(),
            window_end=window.end.isoformat(),
            next_id=cursor.next_id,
        )

        def on_page(got: Delivered, after: Cursor) -> None:
            if after.window is None:  # its last page, committed with it
                self._finish(index)
            on_progress(got.emitted + got.dead_letters, flight(after.window is None))

        scanned = await self._scanner.scan(
            COMPLETED_SESSIONS, COMPLETED, cursor, self.stream(index), on_page=on_page
        )
        outcome.pages += scanned.pages
        outcome.delivered.add(scanned.delivered)
        if scanned.cursor.done_by(window.end):  # also when upstream repeated a page token
            self._finish(index)
