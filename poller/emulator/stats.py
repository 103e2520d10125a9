"""What the emulator was asked, and how it answered: per operation, counted by outcome and kind.

Tests read these to check what a client did (how many calls, how many retries after a fault);
benchmarks read ``records`` to see how much was served.
"""

from __future__ import annotations

from collections import Counter

# Always shown, so a reader can rely on them being there.
OUTCOMES = ("total", "ok", "fault", "auth", "error")


class CallStats:
    """Counters per operation name."""

    def __init__(self) -> None:
        self._calls: dict[str, Counter[str]] = {}

    def count(self, operation: str, *labels: str, records: int = 0) -> None:
        """Count one call under each of ``labels`` (an outcome, fault or mutation kinds)."""
        counters = self._counters(operation)
        counters["total"] += 1
        counters.update(labels)
        if records:
            counters["records"] += records

    def note(self, operation: str, label: str) -> None:
        """Count something about a call already counted (a client that went away...)."""
        self._counters(operation)[label] += 1

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"calls": {operation: dict(c) for operation, c in sorted(self._calls.items())}}

    def reset(self) -> None:
        self._calls.clear()

    def _counters(self, operation: str) -> Counter[str]:
        counters = self._calls.get(operation)
        if counters is None:
            counters = self._calls[operation] = Counter(dict.fromkeys(OUTCOMES, 0))
        return counters
