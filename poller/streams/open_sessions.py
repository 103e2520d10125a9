"""What the started stream saw open: how far back the fast scan must look, and which sessions
just ended.

Every session that ends after a scan was open when that scan ran. If a listing of open
sessions finished (upstream time ``valid_from``) no later than the previous scan's end, each
session open at that end was either in the listing, or started after the listing began: so the
next scan need look back only to ``bound``, the earliest of those starts. Without a recent
listing the scan falls back to its full overlap.

A session that was in one complete listing and is missing from the next has ended (or
vanished): its start is known, so the completed stream fetches just that start at once instead
of leaving a long session to the reconcile sweep. A session not found after a few tries is left
to the sweep, which remains the safety net either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from poller.window import Window

# Departed sessions are looked for this many times (ticks of the completed stream).
DEPARTED_TRIES = 5
# Departed starts closer than this share one request.
_MERGE = timedelta(seconds=60)


@dataclass(frozen=True)
class OpenSnapshot:
    valid_from: datetime
    bound: datetime


class OpenSessions:
    def __init__(self, max_age: timedelta) -> None:
        self._max_age = max_age
        self._snapshots: list[OpenSnapshot] = []
        self._open: dict[int, datetime] | None = None
        # Ended sessions to fetch: id -> (start, tries left).
        self._departed: dict[int, tuple[datetime, int]] = {}

    def record(
        self, listing_began: datetime, listing_ended: datetime, open_now: Mapping[int, datetime]
    ) -> None:
        """A complete listing: the sessions open (id -> start) between the two instants."""
        oldest = min(open_now.values(), default=None)
        bound = listing_began if oldest is None else min(oldest, listing_began)
        self._snapshots = [*self._snapshots[-3:], OpenSnapshot(listing_ended, bound)]
        if self._open is not None:
            for session_id, start in self._open.items():
                if session_id not in open_now:
                    self._departed[session_id] = (start, DEPARTED_TRIES)
        self._open = dict(open_now)

    def forget(self) -> None:
        """The listing can no longer be trusted (it failed, or the stream is off)."""
        self._snapshots = []
        self._open = None

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

    def departed_windows(self, covered_from: datetime) -> list[Window]:
        """Windows holding the starts of sessions that left the listing, before
        ``covered_from`` (the fast scan reads from there on anyway); each call is a try."""
        starts = sorted(start for start, _ in self._departed.values() if start < covered_from)
        windows: list[Window] = []
        for start in starts:
            if windows and start - windows[-1].end < _MERGE:
                windows[-1] = Window(windows[-1].start, start + timedelta(seconds=1))
            else:
                windows.append(Window(start, start + timedelta(seconds=1)))
        return windows

    def departed(self) -> list[int]:
        return list(self._departed)

    def tried(self, found: Iterable[int]) -> None:
        """After a fetch: the sessions ``found`` are done; the others lose a try."""
        for session_id in found:
            self._departed.pop(session_id, None)
        for session_id, (start, tries) in list(self._departed.items()):
            if tries <= 1:
                del self._departed[session_id]  # the reconcile sweep's now
            else:
                self._departed[session_id] = (start, tries - 1)
