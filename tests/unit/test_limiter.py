"""The backfill's AIMD limit of concurrent upstream calls (poller/limiter.py)."""

from __future__ import annotations

import asyncio

import pytest

from poller.errors import RetriableUpstreamError
from poller.limiter import ConcurrencyLimiter

THROTTLED = RetriableUpstreamError("throttled", "HTTP 429")


class Upstream:
    """Calls through the limiter that end when the test says so."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter
        self.running: list[asyncio.Future[None]] = []
        self.peak = 0
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            self.tasks.append(asyncio.create_task(self._call()))

    async def _call(self) -> None:
        async with self.limiter.slot():
            done = asyncio.get_running_loop().create_future()
            self.running.append(done)
            self.peak = max(self.peak, len([f for f in self.running if not f.done()]))
            await done

    async def end(self, error: BaseException | None = None) -> None:
        """End the oldest running call (answered, or with ``error``), then let others start."""
        future = next(f for f in self.running if not f.done())
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
        for _ in range(3):
            await asyncio.sleep(0)

    async def settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_no_more_calls_at_once_than_the_limit_which_starts_at_the_ceiling() -> None:
    upstream = Upstream(ConcurrencyLimiter(3))
    upstream.start(10)
    await upstream.settle()
    assert upstream.limiter.limit == 3
    assert upstream.peak == 3
    for _ in range(7):
        await upstream.end()
    assert upstream.peak == 3
    await upstream.close()


async def test_a_refusal_halves_the_limit_once_per_episode() -> None:
    changes: list[tuple[int, str]] = []
    limiter = ConcurrencyLimiter(4, on_change=lambda limit, why: changes.append((limit, why)))
    upstream = Upstream(limiter)
    upstream.start(10)
    await upstream.settle()
    # All four calls in flight are refused: the same episode, one decrease.
    for _ in range(4):
        await upstream.end(THROTTLED)
    assert limiter.limit == 2 and limiter.throttled == 4
    assert changes == [(2, "throttled")]
    # A refusal of a call sent after the decrease is a new episode: 2 -> 1, never below.
    await upstream.end(THROTTLED)
    assert limiter.limit == 1
    await upstream.end(THROTTLED)
    assert limiter.limit == 1
    await upstream.close()


async def test_the_limit_rises_by_one_after_rounds_of_answers_while_calls_wait() -> None:
    limiter = ConcurrencyLimiter(3, rounds=2)
    upstream = Upstream(limiter)
    upstream.start(40)
    await upstream.settle()
    for _ in range(3):
        await upstream.end(THROTTLED)
    assert limiter.limit == 2
    # Every call in flight was refused; those sent since count towards a raise.
    answered_before_raise = 0
    while limiter.limit == 2:
        await upstream.end()
        answered_before_raise += 1
    assert limiter.limit == 3
    # Never beyond the ceiling, however many answers.
    for _ in range(20):
        await upstream.end()
    assert limiter.limit == 3
    assert upstream.peak == 3
    # rounds x limit answers, doubled: 3 is the level that was refused.
    assert answered_before_raise == 2 * 2 * 2
    await upstream.close()


async def test_answers_with_room_to_spare_do_not_raise_the_limit() -> None:
    limiter = ConcurrencyLimiter(4, rounds=1)
    upstream = Upstream(limiter)
    upstream.start(4)
    await upstream.settle()
    for _ in range(4):
        await upstream.end(THROTTLED)
    assert limiter.limit == 2
    # One call at a time, nobody waiting: the limit is not what holds anything back.
    for _ in range(20):
        upstream.start(1)
        await upstream.settle()
        await upstream.end()
    assert limiter.limit == 2
    await upstream.close()


async def test_a_level_refused_before_is_probed_ever_more_slowly() -> None:
    limiter = ConcurrencyLimiter(2, rounds=1)
    upstream = Upstream(limiter)
    upstream.start(200)
    await upstream.settle()

    async def answers_to_reach_2() -> int:
        n = 0
        while limiter.limit < 2:
            await upstream.end()
            n += 1
        return n

    waits = []
    for _ in range(3):
        # Refused at 2 (a call sent at that level): back to 1.
        while limiter.limit == 2:
            await upstream.end(THROTTLED)
        waits.append(await answers_to_reach_2())
    # The calls sent before each decrease come first; then 1x, 2x, 4x... answers are needed.
    assert waits[1] > waits[0] and waits[2] > waits[1]
    await upstream.close()


async def test_other_failures_do_not_move_the_limit() -> None:
    limiter = ConcurrencyLimiter(2)
    upstream = Upstream(limiter)
    upstream.start(5)
    await upstream.settle()
    for _ in range(5):
        await upstream.end(RetriableUpstreamError("timeout", "no answer"))
    assert limiter.limit == 2 and limiter.throttled == 0
    await upstream.close()


def test_the_ceiling_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimiter(0)
