"""How many upstream calls run at once: additive increase, multiplicative decrease (AIMD).

The backfill fetches several windows at once, but the service refuses a partner that asks too
much at a time (HTTP 429/503: ``RetriableUpstreamError`` with reason ``throttled``). Every call
takes a slot here first (``GlanceClient``'s gate), and the answers move the limit:

* a refusal halves it (rounded up, at least 1), once per episode: refusals of calls that were
  sent before the last decrease are the same episode and change nothing more;
* it rises by one after ``rounds x limit`` calls answered while others waited for a slot (the
  limit was what held the backfill back: calls made with room to spare prove nothing), never
  beyond the ceiling (``backfill.concurrency``);
* a level that was refused before is tried again ever more slowly: each refusal there doubles
  the calls needed to reach it (up to 64 times), so the limit settles just below it and probes
  it now and then, in case the service can take more again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from poller.errors import RetriableUpstreamError

MAX_STRIKES = 6
OnChange = Callable[[int, str], None]


def is_throttled(error: BaseException) -> bool:
    return isinstance(error, RetriableUpstreamError) and error.reason == "throttled"


class ConcurrencyLimiter:
    def __init__(self, ceiling: int, *, rounds: int = 4, on_change: OnChange | None = None) -> None:
        if ceiling < 1 or rounds < 1:
            raise ValueError("the ceiling and the rounds are at least 1")
        self.ceiling = ceiling
        self.limit = ceiling
        self.in_flight = 0
        self.throttled = 0  # refusals seen, every one counted
        self._rounds = rounds
        self._on_change = on_change
        self._episode = 0  # moves on at each decrease
        self._credit = 0  # calls answered at this limit while others waited
        self._strikes: dict[int, int] = {}  # level -> refusals seen at it
        self._waiters: list[asyncio.Future[None]] = []

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``limit`` slots for the length of one call; its outcome (a
        refusal, an answer, another failure) moves the limit."""
        episode = await self._acquire()
        outcome = "failed"
        try:
            yield
            outcome = "answered"
        except BaseException as exc:
            if is_throttled(exc):
                outcome = "throttled"
            raise
        finally:
            self.in_flight -= 1
            if outcome == "throttled":
                self.refused(episode)
            elif outcome == "answered":
                self.answered(episode)
            self._wake()

    async def _acquire(self) -> int:
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1
        return self._episode

    def _wake(self) -> None:
        # Each woken waiter checks again; waking all of them (a few) keeps this simple.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def refused(self, episode: int) -> None:
        self.throttled += 1
        if episode != self._episode:
            return  # sent before the last decrease: the same episode
        self._strikes[self.limit] = self._strikes.get(self.limit, 0) + 1
        self._episode += 1
        self._credit = 0
        lowered = max(1, (self.limit + 1) // 2)
        if lowered != self.limit:
            self.limit = lowered
            self._changed("throttled")

    def answered(self, episode: int) -> None:
        if episode != self._episode or not self._waiters or self.limit >= self.ceiling:
            return
        self._credit += 1
        strikes = min(self._strikes.get(self.limit + 1, 0), MAX_STRIKES)
        if self._credit >= self._rounds * self.limit * 2**strikes:
            self._credit = 0
            self.limit += 1
            self._changed("raised")
            self._wake()

    def _changed(self, why: str) -> None:
        if self._on_change is not None:
            self._on_change(self.limit, why)


class HeldPages:
    """At most ``limit`` pages built (their events made and handed to Kafka) and not yet
    committed, across every scan that shares it: the backfill's windows in flight share one, so
    what they hold in memory does not grow with the windows. A scan that holds a page and finds
    no room commits it before taking room for the next (it never waits while holding one), so
    scans cannot wait on each other in a circle. ``peak`` is the most held at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit is at least 1")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._room = asyncio.Semaphore(limit)

    def full(self) -> bool:
        return self._room.locked()

    async def take(self) -> None:
        await self._room.acquire()
        self.held += 1
        self.peak = max(self.peak, self.held)

    def give(self) -> None:
        self.held -= 1
        self._room.release()
