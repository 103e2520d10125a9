"""What the service loop needs of a stream: a name, an interval, and a tick."""

from __future__ import annotations

from typing import Protocol


class TickResult(Protocol):
    # More is waiting upstream: the loop ticks again at once instead of waiting.
    @property
    def behind(self) -> bool: ...

    # Upstream listed nothing: the next tick may wait for the shared mark (service.py).
    @property
    def quiet(self) -> bool: ...

    def as_log(self) -> dict[str, object]: ...


class Stream(Protocol):
    name: str
    partner_id: int
    # Whether ticks read or write emitted ids (those of one partner never overlap).
    uses_state: bool

    @property
    def interval(self) -> float: ...

    async def tick(self) -> TickResult: ...
