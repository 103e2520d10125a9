"""Everything one running emulator holds: its clock, partners, sessions, fault plan and counters.

The HTTP layer (``app.py``) reads and changes it; tests may also drive it directly.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Literal

from poller.emulator.behaviour import ServiceBehaviour
from poller.emulator.clock import EmulatorClock
from poller.emulator.faults import FaultPlan
from poller.emulator.operations import ActivityService
from poller.emulator.stats import CallStats
from poller.emulator.store import SessionStore
from poller.emulator.traffic import LiveTraffic, TrafficProfile

DEFAULT_PARTNERS = {12345: "demo-api-key"}

DateFormat = Literal["iso", "ms"]


@dataclass(eq=False)
class EmulatorState:
    clock: EmulatorClock = field(default_factory=EmulatorClock)
    partners: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_PARTNERS))
    """partnerId -> apiKey."""
    store: SessionStore = field(default_factory=SessionStore)
    faults: FaultPlan = field(default_factory=FaultPlan)
    stats: CallStats = field(default_factory=CallStats)
    date_format: DateFormat = "iso"
    """How records' dates are written: ISO with Z, or ASMX's \\/Date(ms)\\/."""
    seed: int = 0
    """Root of every generated sequence (live traffic, admin traffic without a seed)."""
    profile: TrafficProfile = field(default_factory=TrafficProfile)
    behaviour: ServiceBehaviour = field(default_factory=ServiceBehaviour)
    """Latency per call and the per-partner concurrency limit (off by default)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server shuts down, so hanging answers give up at once."""
    live_rate: float = field(default=0.0, init=False)
    """Live sessions per minute of emulated time, per partner (see start_live_traffic)."""
    live: dict[int, LiveTraffic] = field(default_factory=dict, init=False)
    _traffic_batches: itertools.count[int] = field(
        default_factory=itertools.count, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.date_format not in ("iso", "ms"):
            raise ValueError(f"date format is 'iso' or 'ms', not {self.date_format!r}")
        for partner_id in self.partners:
            self.store.partner(partner_id)

    @property
    def service(self) -> ActivityService:
        return ActivityService(self.store, self.partners)

    def now(self) -> float:
        return self.clock.timestamp()

    def add_partner(self, partner_id: int, api_key: str) -> None:
        self.partners[partner_id] = api_key
        self.store.partner(partner_id)
        if self.live_rate > 0 and partner_id not in self.live:
            self._start_live(partner_id, origin=self.now())

    def start_live_traffic(self, rate_per_minute: float, backlog_hours: float = 0.0) -> None:
        """Sessions start at ``rate_per_minute`` for every partner, from ``backlog_hours`` ago."""
        self.live_rate = rate_per_minute
        self.live.clear()
        if rate_per_minute <= 0:
            return
        origin = self.now() - backlog_hours * 3600
        for partner_id in self.partners:
            self._start_live(partner_id, origin)

    def set_live_rate(self, rate_per_minute: float) -> None:
        """Change the live traffic's rate from now on (0 stops it); what has started stays."""
        if rate_per_minute < 0:
            raise ValueError("the live traffic rate cannot be negative")
        self.catch_up()
        self.live_rate = rate_per_minute
        batch = next(self._traffic_batches)
        now = self.now()
        self.live.clear()
        if rate_per_minute > 0:
            for partner_id in self.partners:
                self.live[partner_id] = LiveTraffic(
                    partner_id,
                    rate_per_minute,
                    now,
                    seed=f"{self.seed}/live/{partner_id}/{batch}",
                    profile=self.profile,
                )

    def catch_up(self) -> int:
        """Materialise the live sessions that have started by now; returns how many."""
        made = 0
        if self.live:
            now = self.now()
            for partner_id, traffic in self.live.items():
                sessions = traffic.due(now, self.store.allocate_id)
                if sessions:
                    self.store.add(partner_id, sessions)
                    made += len(sessions)
        return made

    def next_traffic_seed(self) -> str:
        """A seed for a traffic batch nobody gave one to: different each time, reproducible."""
        return f"{self.seed}/batch/{next(self._traffic_batches)}"

    def reset(self) -> None:
        """Forget sessions, faults and counters; partners stay, ids are never reused.

        Live traffic restarts from now, without replaying its backlog.
        """
        self.store.clear()
        self.faults.clear()
        self.stats.reset()
        self.behaviour.reset_load()
        now = self.now()
        for traffic in self.live.values():
            traffic.restart_at(now)

    def _start_live(self, partner_id: int, origin: float) -> None:
        self.live[partner_id] = LiveTraffic(
            partner_id,
            self.live_rate,
            origin,
            seed=f"{self.seed}/live/{partner_id}",
            profile=self.profile,
        )
