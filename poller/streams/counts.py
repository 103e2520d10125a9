"""The counts stream: snapshots of the day's PartnerSessionCounts -> ``session.counts``.

For alerting on volume, time-outs and failures: active sessions by type and current status,
completed sessions by type and terminal status, for the current UTC day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from poller.errors import RetriableUpstreamError
from poller.events import CountsSnapshot, EventBuilder
from poller.glance.client import GlanceClient
from poller.logs import excerpt
from poller.publisher import Publisher, publish
from poller.settings import CountsStreamSettings
from poller.streams.names import COUNTS
from poller.window import Window, floor_to

ROW_FIELDS = ("type", "status", "count", "averageDuration")


@dataclass
class CountsSummary:
    active: int = 0
    completed: int = 0
    behind: bool = False

    @property
    def quiet(self) -> bool:
        return True  # a snapshot of counts: no session waits on its timing

    def as_log(self) -> dict[str, object]:
        return {"active": self.active, "completed": self.completed}


def count_rows(rows: Any) -> list[dict[str, Any]]:
    """The documented row fields only, checked; a wrong shape is a retriable fault."""
    if not isinstance(rows, list):
        raise RetriableUpstreamError("bad_shape", "session counts are not a list")
    clean = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("count"), int):
            raise RetriableUpstreamError(
                "bad_shape", excerpt(f"a counts row is malformed: {row!r}", 200)
            )
        clean.append({name: row.get(name) for name in ROW_FIELDS})
    return sorted(clean, key=lambda r: (str(r["type"]), str(r["status"])))


class CountsStream:
    name = COUNTS
    uses_state = False

    def __init__(
        self,
        client: GlanceClient,
        builder: EventBuilder,
        publisher: Publisher,
        settings: CountsStreamSettings,
    ) -> None:
        self._client = client
        self._builder = builder
        self._publisher = publisher
        self._settings = settings
        self.partner_id = client.partner_id

    @property
    def interval(self) -> float:
        return self._settings.interval

    async def tick(self) -> CountsSummary:
        now = (await self._client.server_now()).replace(microsecond=0)
        midnight = floor_to(now, timedelta(days=1))
        day = Window(midnight, midnight + timedelta(days=1))
        active = await self._client.session_counts(day, status="A", shape=count_rows)
        completed = await self._client.session_counts(day, status="C", shape=count_rows)
        refused = await publish(
            self._publisher, [self._builder.counts(CountsSnapshot(now, day, active, completed))]
        )
        if refused:
            raise RetriableUpstreamError("too_large", refused[0].reason)
        return CountsSummary(
            active=sum(r["count"] for r in active), completed=sum(r["count"] for r in completed)
        )
