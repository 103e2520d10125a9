"""A fast-scan tick must not spend itself on a stale reading of upstream's clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from poller.glance.paging import Window
from poller.glance.records import SessionPage
from poller.settings import CompletedStreamSettings, GlanceSettings
from poller.state import Cursor, StateStore
from poller.streams.completed import STREAM, CompletedStream
from poller.streams.feed import Delivered

T = datetime(2026, 3, 10, 12, 0, 5, tzinfo=UTC)


class ClockOnlyClient:
    """Upstream whose latest Date is the one the previous tick ended on; a client that asks
    again (as ``server_now`` does when told its reading must be later than the cursor) sees
    that two seconds have passed since."""

    partner_id = 1

    def __init__(self) -> None:
        self.windows: list[Window] = []

    async def server_now(
        self, max_age: float = 1.0, *, later_than: datetime | None = None
    ) -> datetime:
        asks_again = max_age <= 0 or (later_than is not None and later_than >= T)
        return T + timedelta(seconds=2) if asks_again else T

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncIterator[SessionPage]:
        self.windows.append(window)
        yield SessionPage(start_token, 0, [])


class Feed:
    async def deliver(self, records: Any, *args: Any, **kwargs: Any) -> Delivered:
        return Delivered(records=len(records))


async def test_a_reading_no_later_than_the_cursor_is_asked_again(tmp_path: Path) -> None:
    # Found by the benchmark: ticks run at a fixed rate, so the previous tick's last Date
    # could still count as fresh, equal the cursor, and every other tick scanned nothing.
    state = StateStore.open(tmp_path / "state.sqlite3")
    try:
        state.commit(1, cursors={STREAM: Cursor(T)})
        client = ClockOnlyClient()
        stream = CompletedStream(
            client,  # type: ignore[arg-type]
            Feed(),  # type: ignore[arg-type]
            state,
            GlanceSettings(base_url="http://upstream.invalid"),
            CompletedStreamSettings(overlap=0),
            asyncio.Event(),
        )
        summary = await stream.tick()
        assert summary.scanned_until == T + timedelta(seconds=2)
        assert [w.end for w in client.windows] == [T + timedelta(seconds=2)]
    finally:
        state.close()
