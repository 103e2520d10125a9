"""Windows of session start times: what every scan and every state cursor is cut into.

Below both the client (``poller.glance``) and the state (``poller.state``): neither needs the
other to speak of a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    """``moment`` rounded down to a multiple of ``step`` since the Unix epoch."""
    return _EPOCH + ((moment - _EPOCH) // step) * step


def buckets(span: Window, step: timedelta) -> list[Window]:
    """``span`` cut at the multiples of ``step``: the first and last pieces may be partial."""
    pieces: list[Window] = []
    start = span.start
    while start < span.end:
        end = min(floor_to(start, step) + step, span.end)
        pieces.append(Window(start, end))
        start = end
    return pieces
