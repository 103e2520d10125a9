"""The one scan: a window's pages, followed by ``nextId``, delivered and committed in order.

Used by the live completed stream, the reconcile rescans, the departed-session fetches, the
started stream's listings and backfill. The next page's request leaves before a page's events
are built (unless Kafka has not answered for the page before), and a page is built while the
previous one awaits its acknowledgements; pages are committed strictly in order, each only
after all of its own acknowledgements, with the cursor the ``Cursor`` value says comes after
it. A stop asked for meanwhile finishes the page in flight and settles every page handed to
Kafka; a kill re-sends at most the two pages in flight, with the same ids.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from poller import metrics
from poller.cursor import Cursor
from poller.events import EventType
from poller.glance.client import GlanceClient
from poller.glance.paging import RepeatedPageToken
from poller.glance.records import SessionPage
from poller.limiter import HeldPages
from poller.logs import get_logger
from poller.streams.feed import Delivered, PartnerFeed, Sending
from poller.window import Window

log = get_logger(__name__)
# A page read (before its events are sent): its records, for a caller that needs them.
OnRead = Callable[[SessionPage], None]
# A page settled: what it delivered and the cursor committed after it.
OnPage = Callable[[Delivered, Cursor], None]


@dataclass
class ScanOutcome:
    cursor: Cursor
    delivered: Delivered = field(default_factory=Delivered)
    pages: int = 0
    # Every page of the window was read (not stopped, not cut short by a repeated token).
    complete: bool = False
    # Stopped at ``max_pages`` with upstream pointing to more: the caller reads it again later.
    cut_short: bool = False
    # Upstream's time on the last page: the listing was true then.
    served_at: datetime | None = None


class Scanner:
    def __init__(
        self,
        client: GlanceClient,
        feed: PartnerFeed,
        page_size: int,
        stopping: asyncio.Event,
        held: HeldPages | None = None,
    ) -> None:
        self.client = client
        self.feed = feed
        self.page_size = page_size
        self.stopping = stopping
        # Shared by every scan of this scanner: pages built and not yet committed (None: two
        # per scan, the one awaiting its acknowledgements and the next).
        self.held = held

    async def scan(
        self,
        operation: str,
        stream: EventType,
        cursor: Cursor,
        cursor_name: str | None = None,
        *,
        max_pages: int | None = None,
        on_page: OnPage | None = None,
        on_read: OnRead | None = None,
        also: Mapping[str, Cursor] | None = None,
    ) -> ScanOutcome:
        """Page the cursor's window from its ``next_id`` until it ends, ``max_pages`` were
        read or a stop is asked for; each page's cursor is committed under ``cursor_name``
        (None: only the ids are), with the cursors ``also`` beside it."""
        window = cursor.window
        if window is None:
            raise ValueError("the cursor is not in a window")
        outcome = ScanOutcome(cursor)
        records_read = metrics.RECORDS_READ.labels(str(self.feed.partner_id), stream)
        pages = self.client.session_pages(operation, window, self.page_size, cursor.next_id)
        # A page awaiting its acknowledgements keeps its events, not its parsed records: with
        # many partners catching up at once, those records would double what waits for Kafka.
        in_flight: tuple[Sending, Cursor] | None = None
        held, holding = self.held, 0
        # The next page's request, sent before this page's events are built (while Kafka
        # keeps up): against a service that takes half a second a page, building is free.
        ahead: asyncio.Future[SessionPage | None] | None = None

        async def settle() -> None:
            nonlocal in_flight, holding
            if in_flight is None:
                return
            sending, after = in_flight
            in_flight = None
            delivered = await self.feed.settle(sending)
            if held is not None:
                held.give()
                holding -= 1
            outcome.delivered.add(delivered)
            outcome.cursor = after
            if on_page is not None:
                on_page(delivered, after)

        try:
            while outcome.pages != max_pages and not self.stopping.is_set():
                # A stop asked for meanwhile lets this page finish: fetched, published,
                # acknowledged and committed (the service's deadline bounds it).
                page = await (ahead or anext(pages, None))
                ahead = None
                if page is None:
                    outcome.complete = True
                    break
                outcome.pages += 1
                if not page.next_token:
                    outcome.complete = True  # the last page, known without asking for more
                # Only while Kafka is seen to keep up (the page before is acknowledged): with
                # it away, the page awaiting its answer and the one the client fetches behind
                # it are all a scan holds.
                keeping_up = in_flight is not None and in_flight[0].publication.answered()
                if page.next_token and outcome.pages != max_pages and keeping_up:
                    ahead = asyncio.ensure_future(anext(pages, None))
                    await asyncio.sleep(0)  # its request leaves before the building starts
                outcome.served_at = page.served_at
                records_read.inc(len(page.records))
                after = (in_flight[1] if in_flight else cursor).after_page(page.next_token)
                if on_read is not None:
                    on_read(page)
                if held is not None:
                    if held.full():
                        await settle()  # never wait for room while holding a page
                    await held.take()
                    holding += 1
                sending = await self.feed.send(
                    page.records,
                    stream,
                    operation,
                    {**(also or {}), cursor_name: after} if cursor_name else also,
                    window,
                    in_flight=in_flight[0] if in_flight else None,
                )
                del page
                await settle()
                in_flight = (sending, after)
            outcome.cut_short = outcome.pages == max_pages and not outcome.complete
            await settle()
        except RepeatedPageToken as exc:
            await settle()
            log.warning(
                "upstream repeated a page token; ending this window's scan early",
                next_id=exc.token,
                operation=operation,
                window_start=window.start.isoformat(),
                window_end=window.end.isoformat(),
            )
            outcome.cursor = outcome.cursor.finish_window()
            if cursor_name:
                self.feed.commit(cursors={cursor_name: outcome.cursor})
        finally:
            if held is not None:
                for _ in range(holding):  # pages abandoned (a failure, a cancellation)
                    held.give()
            if ahead is not None:  # read, never sent: the cursor is before it
                ahead.cancel()
                # Done before the pages close (they cannot while it runs); a cancellation of
                # this scan meanwhile still propagates.
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()  # retrieved: what it raised belongs to no one now
            await pages.aclose()
        return outcome

    async def listing(
        self,
        operation: str,
        stream: EventType,
        window: Window,
        *,
        max_pages: int | None = None,
        on_page: OnPage | None = None,
        on_read: OnRead | None = None,
    ) -> ScanOutcome:
        """A whole window, with no cursor of its own (rescans, listings)."""
        cursor = Cursor(window.start, window)
        return await self.scan(
            operation, stream, cursor, max_pages=max_pages, on_page=on_page, on_read=on_read
        )

    def pages_for(self, sessions: int) -> int:
        """The most pages a listing of ``sessions`` may take: the full pages of upstream's
        own count and a tenth more (sessions that arrive while it is read), twice over
        (pages upstream sends short), and the empty last page."""
        return 2 * math.ceil(sessions * 1.1 / self.page_size) + 1
