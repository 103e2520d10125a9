"""The emulator's own notion of "now".

Everything time-dependent in the emulator (which sessions have started or ended, the HTTP
``Date`` header, live traffic) reads this clock and never the wall clock, so a test can make a
session end "six hours later" by moving the clock instead of waiting. The clock runs at a
chosen speed from a chosen instant: 1.0 follows real time, 0 freezes it, 60 makes an hour last
a minute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime

from poller.emulator.dates import from_timestamp, to_timestamp


class EmulatorClock:
    """A controllable clock: ``now = anchor + (real time elapsed since anchoring) * speed``."""

    def __init__(
        self,
        start: datetime | None = None,
        speed: float = 1.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_speed(speed)
        self._monotonic = monotonic
        self._speed = speed
        self._anchor_emulated = time.time() if start is None else to_timestamp(start)
        self._anchor_real = monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def timestamp(self) -> float:
        """Now, as seconds since the epoch (what the rest of the emulator computes with)."""
        elapsed = self._monotonic() - self._anchor_real
        return self._anchor_emulated + elapsed * self._speed

    def now(self) -> datetime:
        """Now, as an aware UTC datetime."""
        return from_timestamp(self.timestamp())

    def advance(self, seconds: float) -> None:
        """Jump forward (or, with a negative amount, back) by ``seconds`` of emulated time."""
        self._reanchor(self.timestamp() + seconds)

    def set(self, moment: datetime) -> None:
        """Jump to an instant."""
        self._reanchor(to_timestamp(moment))

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on; ``now()`` does not jump."""
        _check_speed(speed)
        self._reanchor(self.timestamp())
        self._speed = speed

    def _reanchor(self, emulated: float) -> None:
        self._anchor_emulated = emulated
        self._anchor_real = self._monotonic()


def _check_speed(speed: float) -> None:
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"clock speed must be a finite number >= 0, got {speed!r}")
