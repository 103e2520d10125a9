"""The one retry policy of the house: exponential backoff, full jitter, capped, bounded.

Used for transient upstream faults and for Kafka sends alike. A ``retry_after`` attribute on
the exception (from an HTTP ``Retry-After``) replaces the computed delay, capped too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from poller.settings import RetrySettings

OnRetry = Callable[[BaseException, float, int], None]


class _RetryAfterOrFullJitter(wait_base):
    def __init__(self, settings: RetrySettings) -> None:
        self._jitter = wait_random_exponential(
            multiplier=settings.initial_delay, max=settings.max_delay
        )
        self._max_retry_after = settings.max_retry_after

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            return min(float(retry_after), self._max_retry_after)
        return float(self._jitter(retry_state))


def retrying(
    settings: RetrySettings,
    retry_on: tuple[type[BaseException], ...],
    on_retry: OnRetry | None = None,
    *,
    until: asyncio.Event | None = None,
) -> AsyncRetrying:
    """An ``AsyncRetrying`` for ``async for attempt in retrying(...): with attempt: ...``.

    After ``settings.max_attempts`` the last error is re-raised unchanged: the caller's tick
    fails, and its next tick starts over from the committed state. With ``until``, attempts
    go on (same backoff) until that event is set, and the event cuts a backoff short.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is None or state.outcome is None or state.next_action is None:
            return
        error = state.outcome.exception()
        if error is not None:
            on_retry(error, state.next_action.sleep, state.attempt_number)

    if until is None:
        return AsyncRetrying(
            retry=retry_if_exception_type(retry_on),
            wait=_RetryAfterOrFullJitter(settings),
            stop=stop_after_attempt(settings.max_attempts),
            before_sleep=before_sleep,
            reraise=True,
        )
    event = until

    async def interruptible_sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=_RetryAfterOrFullJitter(settings),
        stop=stop_when_event_set(event),  # type: ignore[arg-type]
        sleep=interruptible_sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
