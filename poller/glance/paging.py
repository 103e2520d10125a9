"""Windows and page tokens: the two ways a scan is cut into requests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Window:
    """A half-open ``[start, end)`` range of session start times."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"window ends before it starts: {self.start} > {self.end}")

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def split_window(window: Window, max_span: timedelta) -> list[Window]:
    """Consecutive windows covering ``window``, none longer than ``max_span`` (API: 31 days)."""
    pieces: list[Window] = []
    start = window.start
    while start < window.end:
        end = min(start + max_span, window.end)
        pieces.append(Window(start, end))
        start = end
    return pieces


class RepeatedPageToken(Exception):
    """Upstream handed back a ``nextId`` it had already given: following it would loop."""

    def __init__(self, token: int) -> None:
        self.token = token
        super().__init__(f"nextId {token} was already followed in this scan")


class Paginator:
    """Follows ``nextId`` tokens: 0 ends the scan; a token seen before is refused."""

    def __init__(self, start_token: int = 0) -> None:
        self.token = start_token
        self.finished = False
        self._seen = {start_token} if start_token else set()

    def advance(self, next_token: int) -> None:
        if next_token == 0:
            self.finished = True
            return
        if next_token in self._seen:
            self.finished = True
            raise RepeatedPageToken(next_token)
        self._seen.add(next_token)
        self.token = next_token
