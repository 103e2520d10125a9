"""The one owner of a scan's position: a pure value that only moves forward.

A cursor says how far a scan has got: every session that started before ``scanned_until``
has been read (bar those that end later: the reconcile sweep's), and, while a window is being
paged, that window and the ``nextId`` of the next page to fetch. The scan asks it where to go
next and, once a page is acknowledged, commits the cursor it returns; nothing else decides
how a scan moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from poller.window import Window, split_window

# The state stores page tokens, session ids and partner ids as SQLite integers: signed 64 bits.
MAX_STORED_INT = 2**63 - 1


class CursorError(ValueError):
    """A transition that would move a cursor backwards or hold what cannot be stored."""


@dataclass(frozen=True)
class Cursor:
    scanned_until: datetime
    # The window being paged, and the token of its next page (0: its first page).
    window: Window | None = None
    next_id: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.next_id <= MAX_STORED_INT:
            raise CursorError(f"page token out of range: {self.next_id}")
        if self.window is None and self.next_id:
            raise CursorError("a page token without a window")

    @property
    def in_window(self) -> bool:
        return self.window is not None

    def begin(self, until: datetime, look_back_to: datetime, max_span: timedelta) -> Cursor:
        """The next window to page: from ``look_back_to`` (at most the cursor) up to ``until``,
        at most ``max_span`` long. A cursor already in a window resumes it; one that has
        reached ``until`` stays as it is (``done_by`` tells)."""
        if self.window is not None or self.done_by(until):
            return self
        start = min(look_back_to, self.scanned_until)
        return Cursor(self.scanned_until, split_window(Window(start, until), max_span)[0])

    def done_by(self, until: datetime) -> bool:
        return self.window is None and self.scanned_until >= until

    def after_page(self, next_id: int) -> Cursor:
        """The cursor once a page whose answer carried ``next_id`` is acknowledged: the same
        window at that token, or (``0``) the window finished."""
        if self.window is None:
            raise CursorError("a page outside any window")
        if next_id == 0:
            return self.finish_window()
        return Cursor(self.scanned_until, self.window, next_id)

    def finish_window(self) -> Cursor:
        """The window is done (its last page, or upstream repeated a token): never backwards."""
        if self.window is None:
            return self
        return Cursor(max(self.scanned_until, self.window.end))
