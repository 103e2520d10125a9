"""The reconciliation sweep: late completions, found without re-reading everything.

Upstream lists a session only once it has ended and filters on its start time, so a session
that ends hours after the fast scan covered its start is invisible to that scan. Every
interval the sweep compares, per start-time bucket from where the feed began (at most the
horizon ago) up to where the fast scan has got (the current, partial bucket included),
upstream's count of completed sessions with the ids emitted for that bucket, and rescans only
the buckets where upstream holds more. One counts call over the whole span comes first: when
it matches, that is the whole sweep. Ids of sessions older than the horizon then leave the
state; a session still open at that point is reported as beyond the horizon (a known limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from poller import metrics
from poller.cursor import Cursor
from poller.glance.client import COMPLETED_SESSIONS
from poller.glance.records import total_count
from poller.logs import get_logger
from poller.settings import CompletedStreamSettings, GlanceSettings, ReconcileSettings
from poller.state import Forget
from poller.streams.feed import Delivered
from poller.streams.names import COMPLETED, RECONCILE, STARTED
from poller.streams.scan import Scanner
from poller.window import Window, buckets, floor_to, split_window

log = get_logger(__name__)


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

    @property
    def quiet(self) -> bool:
        return self.delivered.records == 0

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


class ReconcileSweep:
    name = RECONCILE
    uses_state = True

    def __init__(
        self,
        scanner: Scanner,
        glance: GlanceSettings,
        completed: CompletedStreamSettings,
        settings: ReconcileSettings,
    ) -> None:
        self._scanner = scanner
        self._client = scanner.client
        self._feed = scanner.feed
        self._max_window = timedelta(seconds=glance.max_window)
        self._overlap = timedelta(seconds=completed.overlap)
        self._bucket = timedelta(seconds=settings.bucket)
        self._horizon = timedelta(seconds=settings.horizon)
        self._settings = settings
        self.partner_id = scanner.feed.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def _completed_count(self, window: Window, summary: SweepSummary) -> int:
        summary.counts_calls += 1
        return await self._client.session_counts(window, status="C", shape=total_count)

    async def tick(self) -> SweepSummary:
        summary = SweepSummary()
        state = self._feed.state
        completed = state.cursor(self.partner_id, COMPLETED)
        if completed is None:
            return summary  # nothing scanned yet, nothing to reconcile
        done = state.cursor(self.partner_id, RECONCILE)
        now = await self._client.server_now()
        first = now - self._horizon
        if done is not None:
            # Never before where the feed began (or what was already forgotten).
            first = max(first, done.scanned_until)
        # Only what the fast scan has covered, up to the second: the current bucket too.
        last = completed.scanned_until
        if last > first:
            await self._reconcile(Window(first, last), summary)
        if not self._scanner.stopping.is_set():
            edge = floor_to(min(now - self._horizon, last - self._overlap), self._bucket)
            await self._forget_beyond_horizon(edge, done, summary)
        labels = {"partner": str(self.partner_id)}
        metrics.LATE_COMPLETIONS.labels(**labels).inc(summary.late_completions)
        metrics.BUCKETS_MISMATCHED.labels(**labels).set(summary.still_mismatched)
        return summary

    async def _reconcile(self, span: Window, summary: SweepSummary) -> None:
        state = self._feed.state
        pieces = buckets(span, self._bucket)
        summary.buckets = len(pieces)
        upstream = await self._completed_count(span, summary)
        if upstream <= state.count_emitted(self.partner_id, COMPLETED, span):
            return
        for bucket in pieces:
            if self._scanner.stopping.is_set():
                return
            upstream = await self._completed_count(bucket, summary)
            if upstream <= state.count_emitted(self.partner_id, COMPLETED, bucket):
                continue
            summary.rescanned += 1
            # Bounded by what upstream counts there: a nextId that never ends would otherwise
            # hold the partner's state (and its fast scan) for as long as it goes on.
            limit = self._scanner.pages_for(upstream)
            outcome = await self._scanner.listing(
                COMPLETED_SESSIONS, COMPLETED, bucket, max_pages=limit
            )
            if outcome.cut_short:
                log.warning(
                    "upstream listed more pages than its count allows; the bucket is read "
                    "again at the next sweep",
                    bucket_start=bucket.start.isoformat(),
                    upstream=upstream,
                    pages=outcome.pages,
                )
            summary.delivered.add(outcome.delivered)
            summary.late_completions += outcome.delivered.emitted
            remaining = upstream - state.count_emitted(self.partner_id, COMPLETED, bucket)
            if remaining > 0:
                summary.still_mismatched += 1
                log.info(
                    "bucket still short after its rescan",
                    bucket_start=bucket.start.isoformat(),
                    upstream=upstream,
                    missing=remaining,
                )

    async def _forget_beyond_horizon(
        self, edge: datetime, done: Cursor | None, summary: SweepSummary
    ) -> None:
        """Report sessions still open as their start leaves the horizon, then drop old ids."""
        if done is not None and edge <= done.scanned_until:
            return
        if done is not None:
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
        state = self._feed.state
        summary.forgotten_ids = sum(
            state.count_before(self.partner_id, stream, edge) for stream in (COMPLETED, STARTED)
        )
        self._feed.commit(
            cursors={RECONCILE: Cursor(edge)}, forget=Forget((COMPLETED, STARTED), edge)
        )
