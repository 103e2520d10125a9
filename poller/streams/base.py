"""What the service loop needs of a stream: a name, an interval, and a tick."""

from __future__ import annotations

from typing import Protocol


class TickResult(Protocol):
    # More is waiting upstream: the loop ticks again at once instead of waiting.
    @property
    def behind(self) -> bool: ...

    def as_log(self) -> dict[str, object]: ...


class Stream(Protocol):
    name: str
    partner_id: int
    # Whether ticks read or write emitted ids (those of one partner never overlap).
    uses_state: bool

    @property
    def interval(self) -> float: ...

    async def tick(self) -> TickResult: ...
