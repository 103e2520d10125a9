"""The state commit microbenchmark: one page's commit (100 new ids and a cursor) into a state
file that already holds 1,000 or 200,000 ids inside the horizon.

It runs in the benchmark's own process against ``poller.state.StateStore`` on a real file
(WAL, ``synchronous=FULL``: every commit is an fsync, as in the daemon).
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from poller.cursor import Cursor
from poller.state import StateStore
from poller.window import Window

PARTNER = 12345
STREAM = "completed"
PAGE_IDS = 100
FILL_CHUNK = 10_000


def _prefill(store: StateStore, count: int, now: datetime) -> int:
    """``count`` emitted ids whose sessions started within the last 24 h; -> next free id."""
    horizon = 24 * 3600
    next_id = 1_000_000
    for offset in range(0, count, FILL_CHUNK):
        size = min(FILL_CHUNK, count - offset)
        ids = [
            (next_id + i, now - timedelta(seconds=horizon * (count - offset - i) / count))
            for i in range(size)
        ]
        next_id += size
        store.commit(PARTNER, emitted={STREAM: ids})
    return next_id


def measure(path: Path, held: int, commits: int) -> list[float]:
    """Seconds of each of ``commits`` page commits after pre-filling ``held`` ids."""
    store = StateStore.open(path)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        next_id = _prefill(store, held, now)
        window = Window(now - timedelta(minutes=5), now)
        timings: list[float] = []
        for page in range(commits):
            ids = [(next_id + i, now - timedelta(seconds=PAGE_IDS - i)) for i in range(PAGE_IDS)]
            next_id += PAGE_IDS
            cursor = Cursor(now - timedelta(minutes=5), window, next_id + page)
            started = time.perf_counter()
            store.commit(PARTNER, cursors={STREAM: cursor}, emitted={STREAM: ids})
            timings.append(time.perf_counter() - started)
        return timings
    finally:
        store.close()


Ranked = TypeVar("Ranked", float, tuple[float, bool])


def percentile(values: list[Ranked], fraction: float) -> Ranked:
    """Nearest-rank percentile (p99 of 300 values is the 297th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def summary_ms(timings: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(timings) * 1000, 3),
        "p99_ms": round(percentile(timings, 0.99) * 1000, 3),
        "max_ms": round(max(timings) * 1000, 3),
    }
