"""What /healthz and /readyz answer: the truth about each stream and about Kafka.

Ready means: every enabled stream of every partner has had a successful tick recently and
its last tick did not fail, no partner's credentials were rejected, and Kafka has answered
recently. Each reason for not being ready is named, so the answer can be acted upon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from poller import metrics


@dataclass
class _StreamHealth:
    interval: float
    last_success: float | None = None
    failures: int = 0


class Health:
    def __init__(
        self,
        *,
        stale_after_intervals: float = 3.0,
        stale_grace: float = 60.0,
        failed_ticks: int = 1,
        broker_max_silence: float = 60.0,
    ) -> None:
        self._streams: dict[tuple[int, str], _StreamHealth] = {}
        self._rejected: dict[int, str] = {}
        self._stale_after = stale_after_intervals
        self._grace = stale_grace
        self._failed_ticks = failed_ticks
        self._broker_max_silence = broker_max_silence
        self._broker_ok_at: float | None = None
        self._broker_failing = False
        self._missing_topics: set[str] = set()
        self._state_problem: Callable[[], str | None] = lambda: None
        self.running = False

    def watch_state(self, problem: Callable[[], str | None]) -> None:
        """What keeps the state file from taking writes now (None: nothing)."""
        self._state_problem = problem

    def watch(self, partner: int, stream: str, interval: float) -> None:
        self._streams[(partner, stream)] = _StreamHealth(interval)

    def unwatch(self, partner: int, stream: str) -> None:
        self._streams.pop((partner, stream), None)

    def tick_succeeded(self, partner: int, stream: str) -> None:
        health = self._streams.get((partner, stream))
        if health is not None:
            health.last_success = time.monotonic()
            health.failures = 0
        metrics.LAST_SUCCESS.labels(str(partner), stream).set(time.time())

    def tick_failed(self, partner: int, stream: str) -> None:
        health = self._streams.get((partner, stream))
        if health is not None:
            health.failures += 1

    def credentials_rejected(self, partner: int, reason: str = "credentials rejected") -> None:
        self._rejected[partner] = reason

    def broker_answered(self) -> None:
        self._broker_ok_at = time.monotonic()
        self._broker_failing = False
        metrics.BROKER_UP.set(1)

    def broker_failed(self) -> None:
        self._broker_failing = True
        metrics.BROKER_UP.set(0)

    def topics_missing(self, topics: list[str]) -> list[str]:
        """Note topics the broker says do not exist; returns those not noted before."""
        new = [topic for topic in topics if topic not in self._missing_topics]
        self._missing_topics.update(topics)
        self._broker_ok_at = time.monotonic()  # it answered: it is the topic that is missing
        return new

    def topics_found(self, topics: set[str]) -> None:
        self._missing_topics -= topics

    def broker_quiet_for(self) -> float | None:
        """Seconds since Kafka last answered (None: never)."""
        return None if self._broker_ok_at is None else time.monotonic() - self._broker_ok_at

    def problems(self) -> list[str]:
        now = time.monotonic()
        found = [f"partner {p}: {self._rejected[p]}" for p in sorted(self._rejected)]
        for (partner, stream), health in sorted(self._streams.items()):
            if partner in self._rejected:
                continue
            name = f"partner {partner} stream {stream}"
            if health.failures >= self._failed_ticks:
                found.append(f"{name}: {health.failures} failed tick(s) in a row")
            elif health.last_success is None:
                found.append(f"{name}: no successful tick yet")
            elif now - health.last_success > self._stale_after * health.interval + self._grace:
                found.append(f"{name}: no successful tick for {now - health.last_success:.0f}s")
        found += [
            f"kafka: topic {topic} does not exist and the broker does not create it"
            for topic in sorted(self._missing_topics)
        ]
        state_problem = self._state_problem()
        if state_problem is not None:
            found.append(f"state: {state_problem}")
        if self._broker_failing:
            found.append("kafka: unreachable")
        elif self._broker_ok_at is None:
            found.append("kafka: not reached yet")
        elif now - self._broker_ok_at > self._broker_max_silence:
            found.append(f"kafka: silent for {now - self._broker_ok_at:.0f}s")
        metrics.READY.set(0 if found or not self.running else 1)
        return found
