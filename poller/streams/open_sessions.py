"""What the started stream saw open, so the fast scan can look back only as far as needed.

Every session that ends after a scan was open when that scan ran. If a listing of open
sessions finished (upstream time ``valid_from``) no later than the previous scan's end, each
session open at that end was either in the listing, or started after the listing began:
so the next scan need look back only to ``bound``, the earliest of those starts. Without a
recent listing the scan falls back to its full overlap. The overlap stays the upper limit,
and the reconcile sweep remains the safety net either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class OpenSnapshot:
    valid_from: datetime
    bound: datetime


class OpenSessions:
    def __init__(self, max_age: timedelta) -> None:
        self._max_age = max_age
        self._snapshots: list[OpenSnapshot] = []

    def record(
        self, listing_began: datetime, listing_ended: datetime, oldest_start: datetime | None
    ) -> None:
        bound = listing_began if oldest_start is None else min(oldest_start, listing_began)
        self._snapshots = [*self._snapshots[-3:], OpenSnapshot(listing_ended, bound)]

    def forget(self) -> None:
        """The listing can no longer be trusted (it failed, or the stream is off)."""
        self._snapshots = []

    def look_back_to(self, previous_scan_end: datetime) -> datetime | None:
        """How far back the next scan must start, or None when no listing can tell."""
        usable = [
            s
            for s in self._snapshots
            # Strictly earlier: upstream's Date header has whole seconds, so within the same
            # second the listing may have ended after the scan began.
            if s.valid_from < previous_scan_end
            and previous_scan_end - s.valid_from <= self._max_age
        ]
        return max(usable, key=lambda s: s.valid_from).bound if usable else None
