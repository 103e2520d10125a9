"""``glance-poller backfill``: replay a past range into the same topics, resumably.

The range ``[since, until)`` of session start times is read with PartnerCompletedSessions in
windows of at most 31 days, page by page, exactly as the live completed scan reads: the same
events (deterministic ``ce_id``), the same topics, bad records to the same dead-letter topic.
Each page is published and acknowledged before the backfill's cursor (window and ``nextId``)
and the emitted ids are committed, so an interrupted backfill resumes at the page after the
last acknowledged one. For speed the next page is built and queued while one waits for its
acknowledgements (commits stay one page at a time, in order), so a kill re-sends at most the
two pages in flight, with the same ids.

The backfill keeps its progress in its own state file (by default beside the live one,
``<state.path without its suffix>.backfill.sqlite3``): it runs while the daemon holds the live
file, and can never move the live cursor. Its cursor is named after the range, so the same
command resumes and a different range starts afresh; the ids it emitted are kept in that file,
so a session replayed once is not replayed again by an overlapping range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal, NoReturn, Protocol

import aiohttp
import structlog
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from poller.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    ConfigError,
    ConfigProblem,
    PublishFailed,
    RetriableUpstreamError,
)
from poller.events import EventBuilder, PiiPolicy
from poller.glance.client import COMPLETED_SESSIONS, GlanceClient, upstream_tls
from poller.glance.dates import to_request
from poller.glance.paging import RepeatedPageToken, Window, split_window
from poller.glance.records import SessionPage
from poller.health import Health
from poller.logs import get_logger
from poller.native import NATIVE
from poller.publisher import KafkaPublisher
from poller.settings import Config, Partner
from poller.state import Cursor, Scan, StateStore, parse_cli_date
from poller.streams.feed import Delivered, PartnerFeed, Sending
from poller.streams.reconcile import total_count

log = get_logger(__name__)

STATE_SUFFIX = ".backfill.sqlite3"
# The ids the feed remembers are those of the completed stream, in the backfill's own file.
EMITTED_STREAM: Final = "completed"
# Without a terminal, one progress line at least this often, and at least every so many pages.
PROGRESS_EVERY_SECONDS = 5.0
PROGRESS_EVERY_PAGES = 100

RESUME_HINT = "run the same command to resume"

_DESCRIPTION = """\
Replay the sessions that started in [--since, --until) into the live topics (completed
events, and dead letters for bad records), with the event ids the daemon gives them, so
consumers can drop the duplicates. Upstream is read in windows of at most 31 days.

It is resumable: progress is committed after every page Kafka acknowledged, in a state file
of its own (never the daemon's, so it can run beside a running daemon and never moves the
live cursor). Ctrl-C or SIGTERM finishes the page in flight and stops (a second one abandons
that page, to be sent again with the same ids); the same command then resumes where it
stopped, and says "already complete" once the range is done. The ids it sent are kept in
that file, so an overlapping range does not send them again: to replay a range once more,
give it another --state file.

The range must lie in the past (upstream's clock). Sessions still open when it runs are not
listed upstream yet, so they are not replayed; a warning says how many.
"""

_EPILOG = """\
dates: an ISO date (2026-01-31) or date and time (2026-01-31T06:00:00Z, with an offset
such as +01:00 or without one). A date or time WITHOUT a zone is taken as UTC (a date as UTC
midnight). The Activity Service itself would read a zone-less date as US Eastern time;
glance-poller always sends it explicit UTC instants. Whole seconds only.
"""


def parse_instant(text: str) -> datetime:
    """An ISO date or datetime as an aware UTC instant (no zone: UTC), whole seconds."""
    try:
        moment = parse_cli_date(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or date-time: {text!r} (e.g. 2026-01-31 or 2026-01-31T06:00:00Z)"
        ) from None
    if moment.microsecond:
        raise argparse.ArgumentTypeError(f"whole seconds only: {text!r}")
    return moment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--since",
        required=True,
        type=parse_instant,
        metavar="DATE",
        help="start of the range, inclusive (ISO date or date-time; no zone = UTC)",
    )
    parser.add_argument(
        "--until",
        required=True,
        type=parse_instant,
        metavar="DATE",
        help="end of the range, exclusive (ISO date or date-time; no zone = UTC)",
    )
    parser.add_argument(
        "--partner", type=int, metavar="ID", help="only this configured partner (default: all)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count the pages and sessions of the range; produce nothing, write no state",
    )
    parser.add_argument(
        "--state",
        type=Path,
        metavar="PATH",
        help=f"the backfill's own state file (default: state.path with {STATE_SUFFIX})",
    )


def default_state_path(live: Path) -> Path:
    """``glance-poller-state.sqlite3`` -> ``glance-poller-state.backfill.sqlite3``."""
    return live.with_suffix(STATE_SUFFIX)


def cursor_stream(span: Window) -> str:
    """The backfill cursor's name: the same range resumes, another starts afresh."""
    return f"backfill:{to_request(span.start)}/{to_request(span.end)}"


def run(args: argparse.Namespace, config: Config) -> int:
    since: datetime = args.since
    until: datetime = args.until
    problems: list[ConfigProblem] = []
    if until <= since:
        problems.append(
            ConfigProblem("--until", f"must be after --since ({to_request(since)} given)")
        )
    partners = list(config.partners)
    if args.partner is not None:
        partners = [p for p in partners if p.id == args.partner]
        if not partners:
            configured = ", ".join(str(p.id) for p in config.partners) or "none"
            problems.append(
                ConfigProblem(
                    "--partner",
                    f"partner {args.partner} is not configured (configured: {configured})",
                )
            )
    live = config.settings.state.path
    state_path: Path = args.state or default_state_path(live)
    if state_path.resolve() == live.resolve():
        problems.append(
            ConfigProblem(
                "--state", f"{state_path} is the daemon's state file; give the backfill its own"
            )
        )
    if problems:
        raise ConfigError(problems)
    backfill = Backfill(
        config, partners, Window(since, until), None if args.dry_run else state_path
    )
    return asyncio.run(backfill.main())


# -- progress ---------------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, partner_id: int, total: int, done: int) -> None: ...

    def advance(self, sessions: int, window: Window, *, window_done: bool = False) -> None:
        """One more page, with this many sessions newly done (and maybe its window's last)."""

    def close(self) -> None: ...

    def logging(self) -> contextlib.AbstractContextManager[None]:
        """Where log lines go meanwhile (above the bar, on a terminal)."""


class BarProgress:
    """A tqdm bar on stderr: sessions done / total, pages, sessions/s, ETA."""

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

    def advance(self, sessions: int, window: Window, *, window_done: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        self._pages += 1
        if bar.total is not None and bar.n + sessions > bar.total:
            bar.total = bar.n + sessions  # upstream gained sessions since it was counted
        bar.set_postfix(pages=self._pages, refresh=False)
        bar.update(sessions)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def logging(self) -> contextlib.AbstractContextManager[None]:
        return logging_redirect_tqdm()


class LogProgress:
    """Without a terminal: a ``backfill progress`` line every few seconds or pages, and at the
    end of each window."""

    def __init__(
        self, every_seconds: float = PROGRESS_EVERY_SECONDS, every_pages: int = PROGRESS_EVERY_PAGES
    ) -> None:
        self._every_seconds = every_seconds
        self._every_pages = every_pages
        self._partner = 0
        self._total = 0
        self._initial = 0
        self._done = 0
        self._pages = 0
        self._started = 0.0
        self._last_at = 0.0
        self._last_pages = 0

    def start(self, partner_id: int, total: int, done: int) -> None:
        self._partner = partner_id
        self._total = total
        self._initial = self._done = done
        self._pages = self._last_pages = 0
        self._started = self._last_at = time.monotonic()

    def advance(self, sessions: int, window: Window, *, window_done: bool = False) -> None:
        self._done += sessions
        self._pages += 1
        now = time.monotonic()
        if (
            not window_done
            and now - self._last_at < self._every_seconds
            and self._pages - self._last_pages < self._every_pages
        ):
            return
        self._last_at, self._last_pages = now, self._pages
        elapsed = now - self._started
        rate = (self._done - self._initial) / elapsed if elapsed > 0 else 0.0
        total = max(self._total, self._done)
        eta = round((total - self._done) / rate) if rate > 0 else None
        log.info(
            "backfill progress",
            sessions=self._done,
            total=total,
            percent=round(100 * self._done / total, 1) if total else 100.0,
            pages=self._pages,
            sessions_per_second=round(rate, 1),
            eta_seconds=eta,
            window_start=window.start.isoformat(),
            window_end=window.end.isoformat(),
        )

    def close(self) -> None:
        return None

    def logging(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


# -- the run ----------------------------------------------------------------------------------


class _Stopped(Exception):
    """The stop was asked for while a page was being fetched: nothing of it was published."""


@dataclass
class PartnerOutcome:
    """What one partner's backfill did in this run."""

    result: Literal["complete", "already complete", "interrupted"]
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    upstream_total: int = 0
    seconds: float = 0.0

    def as_log(self) -> dict[str, object]:
        return {
            "pages": self.pages,
            **self.delivered.as_log(),
            "sessions_upstream": self.upstream_total,
            "seconds": round(self.seconds, 1),
        }


class Backfill:
    def __init__(
        self, config: Config, partners: list[Partner], span: Window, state_path: Path | None
    ) -> None:
        self._settings = config.settings
        self._partners = partners
        self._span = span
        self._stream = cursor_stream(span)
        # None: a dry run, which writes no state and produces nothing.
        self._state_path = state_path
        self._max_window = timedelta(seconds=self._settings.glance.max_window)
        self._page_size = self._settings.glance.page_size
        self._stopping = asyncio.Event()
        self._progress: Progress = BarProgress() if sys.stderr.isatty() else LogProgress()

    def _range_log(self) -> dict[str, object]:
        return {"since": to_request(self._span.start), "until": to_request(self._span.end)}

    async def main(self) -> int:
        """Run the backfill; a first SIGINT/SIGTERM finishes the page in flight, a second one
        abandons it (it is sent again, with the same ids, on resume)."""
        loop = asyncio.get_running_loop()
        work = asyncio.current_task()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("stopping after the page in flight (signal again to abandon it)")
                self._stopping.set()
            elif signals == 2 and work is not None:
                work.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            return await self._run()
        except asyncio.CancelledError:
            if signals < 2:
                raise
            if work is not None:
                work.uncancel()
            log.warning(
                f"interrupted; the page in flight was abandoned; {RESUME_HINT}",
                **self._range_log(),
            )
            return EXIT_OK
        finally:
            self._progress.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        settings = self._settings
        glance = settings.glance
        if not glance.verify_tls and glance.base_url.startswith("https:"):
            log.warning("TLS certificate verification is OFF for the Glance Activity Service")
        state = None if self._state_path is None else StateStore.open(self._state_path)
        publisher = None
        if state is not None:
            publisher = KafkaPublisher(
                settings.kafka,
                settings.retry,
                stopping=self._stopping,
                health=Health(),
                retry_forever=False,
            )
        rejected: list[int] = []
        try:
            connector = aiohttp.TCPConnector(ssl=upstream_tls(glance))
            async with aiohttp.ClientSession(connector=connector) as http:
                for partner in self._partners:
                    if self._stopping.is_set():
                        break
                    client = GlanceClient(http, glance, partner, settings.retry)
                    with structlog.contextvars.bound_contextvars(partner=partner.id):
                        try:
                            outcome = await self._partner(client, state, publisher)
                        except AuthenticationFailed as exc:
                            log.error(str(exc))
                            rejected.append(partner.id)
                            continue
                        except (RetriableUpstreamError, PublishFailed) as exc:
                            # The progress bar was closed by the partner's own finally.
                            what = (
                                "the Glance Activity Service kept failing"
                                if isinstance(exc, RetriableUpstreamError)
                                else "Kafka did not acknowledge a page"
                            )
                            log.error(
                                f"backfill stopped: {what}; "
                                f"what was acknowledged is kept, {RESUME_HINT}",
                                error=str(exc),
                                **self._range_log(),
                            )
                            return EXIT_FAILURE
                    if outcome.result == "interrupted":
                        return EXIT_OK
        finally:
            if publisher is not None:
                await publisher.stop(settings.service.shutdown_timeout)
            if state is not None:
                state.close()
        return EXIT_AUTH if rejected else EXIT_OK

    async def _partner(
        self, client: GlanceClient, state: StateStore | None, publisher: KafkaPublisher | None
    ) -> PartnerOutcome:
        partner_id = client.partner_id
        span = self._span
        cursor = state.cursor(partner_id, self._stream) if state is not None else None
        if cursor is not None and cursor.scan is None and cursor.scanned_until >= span.end:
            log.info(
                "backfill already complete: nothing to do",
                state=str(self._state_path),
                **self._range_log(),
            )
            return PartnerOutcome("already complete")
        started = time.monotonic()
        windows = split_window(span, self._max_window)
        total, still_open = await self._upstream_counts(client, windows)
        now = await client.server_now()
        if span.end > now:
            raise ConfigError(
                [
                    ConfigProblem(
                        "--until",
                        f"{to_request(span.end)} is after the service's current time "
                        f"({to_request(now)}): a backfill replays the past, the daemon the present",
                    )
                ]
            )
        if still_open:
            log.warning(
                "sessions that started in the range are still open: they are not listed yet, "
                "so this backfill does not replay them",
                still_open=still_open,
            )
        if state is None or publisher is None:
            return await self._dry_run(client, windows, total, started)
        done = state.count_emitted(partner_id, EMITTED_STREAM, span)
        log.info(
            "backfill resuming" if cursor is not None else "backfill starting",
            windows=len(windows),
            sessions_upstream=total,
            already_done=done,
            state=str(self._state_path),
            native_fast_path=NATIVE,
            **self._range_log(),
        )
        pii = PiiPolicy.from_settings(self._settings.events)
        builder = EventBuilder(partner_id, self._settings.topics, pii)
        client.native = builder.native
        feed = PartnerFeed(partner_id, builder, publisher, state)
        feed.started_enabled = False  # the completed topic (and dead letters) only
        outcome = PartnerOutcome("interrupted", upstream_total=total)
        cursor = cursor or Cursor(span.start)
        with self._progress.logging():
            self._progress.start(partner_id, total, done)
            try:
                while True:
                    if cursor.scan is None and cursor.scanned_until >= span.end:
                        outcome.result = "complete"
                        break
                    if self._stopping.is_set():
                        break
                    if cursor.scan is None:
                        rest = Window(cursor.scanned_until, span.end)
                        cursor = Cursor(
                            cursor.scanned_until, Scan(split_window(rest, self._max_window)[0], 0)
                        )
                    cursor = await self._scan(client, feed, state, cursor, outcome)
            finally:
                self._progress.close()
        outcome.seconds = time.monotonic() - started
        if outcome.result == "complete":
            log.info("backfill complete", **self._range_log(), **outcome.as_log())
        else:
            log.warning(
                f"interrupted; {RESUME_HINT}",
                scanned_until=cursor.scanned_until.isoformat(),
                next_id=cursor.scan.token if cursor.scan else None,
                **self._range_log(),
                **outcome.as_log(),
            )
        return outcome

    async def _upstream_counts(
        self, client: GlanceClient, windows: list[Window]
    ) -> tuple[int, int]:
        """Completed sessions (the bar's total) and still-open ones, per window: a few calls."""
        completed = still_open = 0
        for window in windows:
            completed += await client.session_counts(window, status="C", shape=total_count)
            still_open += await client.session_counts(window, status="A", shape=total_count)
        return completed, still_open

    async def _scan(
        self,
        client: GlanceClient,
        feed: PartnerFeed,
        state: StateStore,
        cursor: Cursor,
        outcome: PartnerOutcome,
    ) -> Cursor:
        """Pages of the cursor's window from its token, each acknowledged then committed,
        until the window ends or a stop is asked for; returns the cursor committed last."""
        assert cursor.scan is not None
        window = cursor.scan.window
        log.info(
            "backfill window",
            window_start=window.start.isoformat(),
            window_end=window.end.isoformat(),
            next_id=cursor.scan.token,
        )
        pages = client.session_pages(COMPLETED_SESSIONS, window, self._page_size, cursor.scan.token)
        # One page waits for its acknowledgements while the next is built and queued; pages
        # are still committed one by one, in order, each after all of its acknowledgements.
        in_flight: tuple[Sending, Cursor] | None = None

        async def settle(page: tuple[Sending, Cursor]) -> Cursor:
            sending, after = page
            delivered = await feed.settle(sending)
            outcome.pages += 1
            outcome.delivered.add(delivered)
            self._progress.advance(
                delivered.emitted + delivered.dead_letters, window, window_done=after.scan is None
            )
            return after

        try:
            while cursor.scan is not None and not self._stopping.is_set():
                page = await self._next_page(pages)
                if page is None:
                    break
                if page.next_token == 0:
                    after = Cursor(window.end)
                else:
                    after = Cursor(cursor.scanned_until, Scan(window, page.next_token))
                sending = await feed.send(
                    page.records,
                    EMITTED_STREAM,
                    COMPLETED_SESSIONS,
                    {self._stream: after},
                    window,
                    in_flight=in_flight[0] if in_flight else None,
                )
                if in_flight is not None:
                    await settle(in_flight)
                in_flight = (sending, after)
                cursor = after
            if in_flight is not None:
                cursor = await settle(in_flight)
        except RepeatedPageToken as exc:
            if in_flight is not None:
                await settle(in_flight)
            log.warning(
                "upstream repeated a page token; ending this window's scan early",
                next_id=exc.token,
                window_start=window.start.isoformat(),
                window_end=window.end.isoformat(),
            )
            cursor = Cursor(window.end)
            state.commit(client.partner_id, cursors={self._stream: cursor})
        except _Stopped:
            if in_flight is not None:
                cursor = await settle(in_flight)
        finally:
            await pages.aclose()
        return cursor

    async def _next_page(self, pages: AsyncGenerator[SessionPage, None]) -> SessionPage | None:
        """The next page, or None at the end; a stop asked for meanwhile abandons the fetch
        (nothing of that page was published, so nothing is lost)."""
        fetch = asyncio.ensure_future(anext(pages, None))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
            raise _Stopped
        return fetch.result()

    async def _dry_run(
        self, client: GlanceClient, windows: list[Window], total: int, started: float
    ) -> PartnerOutcome:
        outcome = PartnerOutcome("interrupted", upstream_total=total)
        with self._progress.logging():
            self._progress.start(client.partner_id, total, 0)
            try:
                for window in windows:
                    async for page in _pages(client, window, self._page_size, self._stopping):
                        outcome.pages += 1
                        outcome.delivered.records += len(page.records)
                        self._progress.advance(
                            len(page.records), window, window_done=page.next_token == 0
                        )
                    if self._stopping.is_set():
                        break
                else:
                    outcome.result = "complete"
            finally:
                self._progress.close()
        outcome.seconds = time.monotonic() - started
        log.info(
            "backfill dry run: nothing was produced and no state was written",
            windows=len(windows),
            sessions=outcome.delivered.records,
            pages=outcome.pages,
            sessions_upstream=total,
            seconds=round(outcome.seconds, 1),
            interrupted=outcome.result != "complete",
            **self._range_log(),
        )
        return outcome


async def _pages(
    client: GlanceClient, window: Window, page_size: int, stopping: asyncio.Event
) -> AsyncGenerator[SessionPage, None]:
    """A window's pages for the dry run, stopping early when asked to."""
    pages = client.session_pages(COMPLETED_SESSIONS, window, page_size)
    try:
        async for page in pages:
            yield page
            if stopping.is_set():
                return
    except RepeatedPageToken as exc:
        log.warning(
            "upstream repeated a page token; ending this window's count early", next_id=exc.token
        )
    finally:
        await pages.aclose()
