"""The reconciliation sweep: late completions, found without re-reading everything.

Upstream lists a session only once it has ended and filters on its start time, so a session
that ends hours after the fast scan covered its start is invisible to that scan. Every
interval the sweep compares, per start-time bucket inside the horizon, upstream's count of
completed sessions with the ids emitted for that bucket, and rescans only the buckets where
upstream holds more. One counts call over the whole horizon comes first: when it matches,
that is the whole sweep. Ids of sessions older than the horizon then leave the state; a
session still open at that point is reported as beyond the horizon (a known limit).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from poller import metrics
from poller.errors import RetriableUpstreamError
from poller.glance.client import COMPLETED_SESSIONS, GlanceClient
from poller.glance.paging import RepeatedPageToken, Window, split_window
from poller.logs import get_logger
from poller.settings import CompletedStreamSettings, GlanceSettings, ReconcileSettings
from poller.state import Cursor, StateStore
from poller.streams.completed import STREAM as COMPLETED
from poller.streams.feed import Delivered, PartnerFeed

log = get_logger(__name__)
STREAM = "reconcile"


@dataclass
class SweepSummary:
    buckets: int = 0
    counts_calls: int = 0
    rescanned: int = 0
    late_completions: int = 0
    still_mismatched: int = 0
    beyond_horizon: int = 0
    forgotten_ids: int = 0
    delivered: Delivered = field(default_factory=Delivered)
    behind: bool = False

    def as_log(self) -> dict[str, object]:
        return {
            "buckets": self.buckets,
            "counts_calls": self.counts_calls,
            "rescanned": self.rescanned,
            "late_completions": self.late_completions,
            "still_mismatched": self.still_mismatched,
            "beyond_horizon": self.beyond_horizon,
            "forgotten_ids": self.forgotten_ids,
            "dead_letters": self.delivered.dead_letters,
        }


def total_count(rows: Any) -> int:
    """The sum of PartnerSessionCounts rows; a wrong shape is a retriable upstream fault."""
    if not isinstance(rows, list):
        raise RetriableUpstreamError("bad_shape", "session counts are not a list")
    total = 0
    for row in rows:
        count = row.get("count") if isinstance(row, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RetriableUpstreamError(
                "bad_shape", f"a counts row has no valid count: {row!r}"[:200]
            )
        total += count
    return total


def floor_to(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step


class ReconcileSweep:
    name = STREAM
    uses_state = True

    def __init__(
        self,
        client: GlanceClient,
        feed: PartnerFeed,
        state: StateStore,
        glance: GlanceSettings,
        completed: CompletedStreamSettings,
        settings: ReconcileSettings,
        stopping: asyncio.Event,
    ) -> None:
        self._client = client
        self._feed = feed
        self._state = state
        self._page_size = glance.page_size
        self._max_window = timedelta(seconds=glance.max_window)
        self._overlap = timedelta(seconds=completed.overlap)
        self._bucket = timedelta(seconds=settings.bucket)
        self._horizon = timedelta(seconds=settings.horizon)
        self._settings = settings
        self._stopping = stopping
        self.partner_id = client.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def _completed_count(self, window: Window, summary: SweepSummary) -> int:
        summary.counts_calls += 1
        return await self._client.session_counts(window, status="C", shape=total_count)

    async def tick(self) -> SweepSummary:
        summary = SweepSummary()
        completed = self._state.cursor(self.partner_id, COMPLETED)
        if completed is None:
            return summary  # nothing scanned yet, nothing to reconcile
        now = await self._client.server_now()
        first = floor_to(now - self._horizon, self._bucket)
        # Only what the fast scan has covered; the bucket it is in comes next time.
        last = floor_to(completed.scanned_until, self._bucket)
        if last > first:
            await self._reconcile(Window(first, last), summary)
        if not self._stopping.is_set():
            await self._forget_beyond_horizon(
                min(first, completed.scanned_until - self._overlap), summary
            )
        labels = {"partner": str(self.partner_id)}
        metrics.LATE_COMPLETIONS.labels(**labels).inc(summary.late_completions)
        metrics.BUCKETS_MISMATCHED.labels(**labels).set(summary.still_mismatched)
        return summary

    async def _reconcile(self, span: Window, summary: SweepSummary) -> None:
        buckets = [Window(start, start + self._bucket) for start in _steps(span, self._bucket)]
        summary.buckets = len(buckets)
        upstream = await self._completed_count(span, summary)
        if upstream <= self._state.count_emitted(self.partner_id, COMPLETED, span):
            return
        for bucket in buckets:
            if self._stopping.is_set():
                return
            upstream = await self._completed_count(bucket, summary)
            if upstream <= self._state.count_emitted(self.partner_id, COMPLETED, bucket):
                continue
            summary.rescanned += 1
            found = await self._rescan(bucket)
            summary.delivered.add(found)
            summary.late_completions += found.emitted
            remaining = upstream - self._state.count_emitted(self.partner_id, COMPLETED, bucket)
            if remaining > 0:
                summary.still_mismatched += 1
                log.info(
                    "bucket still short after its rescan",
                    bucket_start=bucket.start.isoformat(),
                    upstream=upstream,
                    missing=remaining,
                )

    async def _rescan(self, bucket: Window) -> Delivered:
        found = Delivered()
        pages = self._client.session_pages(COMPLETED_SESSIONS, bucket, self._page_size)
        try:
            async for page in pages:
                found.add(
                    await self._feed.deliver(
                        page.records, "completed", COMPLETED_SESSIONS, listed_in=bucket
                    )
                )
        except RepeatedPageToken as exc:
            log.warning("upstream repeated a page token during a rescan", next_id=exc.token)
        finally:
            await pages.aclose()
        return found

    async def _forget_beyond_horizon(self, edge: datetime, summary: SweepSummary) -> None:
        """Report sessions still open as their start leaves the horizon, then drop old ids."""
        edge = floor_to(edge, self._bucket)
        done = self._state.cursor(self.partner_id, STREAM)
        if done is not None and edge > done.scanned_until:
            for window in split_window(Window(done.scanned_until, edge), self._max_window):
                summary.counts_calls += 1
                still_open = await self._client.session_counts(
                    window, status="A", shape=total_count
                )
                if still_open:
                    summary.beyond_horizon += still_open
                    log.warning(
                        "sessions still open past the horizon: their completion will not be "
                        "delivered (raise reconcile.horizon to cover longer sessions)",
                        sessions=still_open,
                        started_from=window.start.isoformat(),
                        started_until=window.end.isoformat(),
                    )
            metrics.BEYOND_HORIZON.labels(partner=str(self.partner_id)).inc(summary.beyond_horizon)
        if done is None or edge > done.scanned_until:
            for stream in (COMPLETED, "started"):
                summary.forgotten_ids += self._state.forget_before(self.partner_id, stream, edge)
            self._state.commit(self.partner_id, cursors={STREAM: Cursor(edge)})


def _steps(span: Window, step: timedelta) -> list[datetime]:
    starts = []
    start = span.start
    while start < span.end:
        starts.append(start)
        start += step
    return starts
