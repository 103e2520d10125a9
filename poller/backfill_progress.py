"""The backfill's progress: a bar on a terminal that has a size, progress lines otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import NoReturn, Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from poller.backfill_windows import Flight
from poller.logs import get_logger

log = get_logger(__name__)
# Without a bar, one progress line at least this often, and at least every so many pages.
PROGRESS_EVERY_SECONDS = 5.0
PROGRESS_EVERY_PAGES = 100


class Progress(Protocol):
    def start(self, partner_id: int, total: int, done: int) -> None: ...

    def advance(self, sessions: int, flight: Flight) -> None:
        """One more page, with this many sessions newly done, and the windows after it."""

    def close(self) -> None: ...

    def logging(self) -> contextlib.AbstractContextManager[None]:
        """Where log lines go meanwhile (above the bar, on a terminal)."""


def progress_for_stderr() -> Progress:
    """A bar only where one can be drawn: a terminal that knows its width."""
    try:
        sized = sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):
        sized = False
    return BarProgress() if sized else LogProgress()


class BarProgress:
    """A tqdm bar on stderr: sessions done / total, pages, windows done and in flight,
    calls allowed at once, sessions/s, ETA."""

    def __init__(self) -> None:
        self._bar: tqdm[NoReturn] | None = None
        self._pages = 0

    def start(self, partner_id: int, total: int, done: int) -> None:
        self.close()
        self._pages = 0
        self._bar = tqdm(
            total=max(total, done),
            initial=done,
            desc=f"partner {partner_id}",
            unit=" sessions",
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            postfix={"pages": 0},
        )

    def advance(self, sessions: int, flight: Flight) -> None:
        bar = self._bar
        if bar is None:
            return
        self._pages += 1
        if bar.total is not None and bar.n + sessions > bar.total:
            bar.total = bar.n + sessions  # upstream gained sessions since it was counted
        first = f" from {flight.in_flight[0][:10]}" if flight.in_flight else ""
        bar.set_postfix(
            pages=self._pages,
            windows=f"{flight.done}/{flight.windows}, {len(flight.in_flight)} in flight{first}",
            concurrency=flight.concurrency,
            refresh=False,
        )
        bar.update(sessions)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def logging(self) -> contextlib.AbstractContextManager[None]:
        return logging_redirect_tqdm()


class LogProgress:
    """A ``backfill progress`` line every few seconds or pages, and at the end of each window:
    sessions, pages, windows done and those in flight, calls allowed at once, rate, ETA."""

    def __init__(
        self, every_seconds: float = PROGRESS_EVERY_SECONDS, every_pages: int = PROGRESS_EVERY_PAGES
    ) -> None:
        self._every_seconds = every_seconds
        self._every_pages = every_pages
        self._total = self._initial = self._done = self._pages = self._last_pages = 0
        self._started = self._last_at = 0.0

    def start(self, partner_id: int, total: int, done: int) -> None:
        self._total = total
        self._initial = self._done = done
        self._pages = self._last_pages = 0
        self._started = self._last_at = time.monotonic()

    def advance(self, sessions: int, flight: Flight) -> None:
        self._done += sessions
        self._pages += 1
        now = time.monotonic()
        if (
            not flight.window_finished
            and now - self._last_at < self._every_seconds
            and self._pages - self._last_pages < self._every_pages
        ):
            return
        self._last_at, self._last_pages = now, self._pages
        elapsed = now - self._started
        rate = (self._done - self._initial) / elapsed if elapsed > 0 else 0.0
        total = max(self._total, self._done)
        log.info(
            "backfill progress",
            sessions=self._done,
            total=total,
            percent=round(100 * self._done / total, 1) if total else 100.0,
            pages=self._pages,
            sessions_per_second=round(rate, 1),
            eta_seconds=round((total - self._done) / rate) if rate > 0 else None,
            windows=flight.windows,
            windows_done=flight.done,
            windows_in_flight=list(flight.in_flight),
            concurrency=flight.concurrency,
        )

    def close(self) -> None:
        return None

    def logging(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()
