"""How the service behaves under load: latency per call, and a limit of concurrent requests.

The real service is an IIS/ASP.NET application across the internet: every call takes hundreds of
milliseconds, longer for bigger pages, and whatever sits in front of it refuses a partner that
sends too many requests at once. Benchmarks need that cost; tests need it off (the default).

* **latency**: every call the service answers (a normal answer or an ASP.NET fault) waits
  ``latency + latency_per_record * records served`` before its answer leaves. Answers from the
  front end (throttling, redirects, resets) leave at once.
* **concurrency**: with ``max_concurrent`` > 0, a partner's request that arrives while that many
  of its requests are already being answered is refused with 429 (or 503) and ``Retry-After``.
  Which of the two is drawn from a generator seeded by the emulator's seed, so a run with the
  same seed and the same order of refusals answers the same way.

Per partner, the statistics (``GET /admin/stats``) count the requests answered, those refused
for concurrency and the peak of concurrent requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class BehaviourError(ValueError):
    """A setting the service behaviour cannot take."""


def parse_duration(value: Any, name: str) -> float:
    """Seconds from a number of seconds or a text such as ``400ms``, ``0.1ms``, ``2s``, ``1m``."""
    if isinstance(value, bool):
        raise BehaviourError(f"{name} must be a duration (seconds, or text like '400ms')")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise BehaviourError(f"{name} must be a duration (seconds, or text like '400ms')")
    if not math.isfinite(seconds) or seconds < 0:
        raise BehaviourError(f"{name} must be a duration >= 0")
    return seconds


@dataclass(slots=True)
class PartnerLoad:
    """One partner's requests as the concurrency limit sees them."""

    in_flight: int = 0
    peak: int = 0
    admitted: int = 0
    throttled: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "calls": self.admitted + self.throttled,
            "admitted": self.admitted,
            "throttled": self.throttled,
            "inFlight": self.in_flight,
            "peakConcurrent": self.peak,
        }


@dataclass
class ServiceBehaviour:
    """Latency and the per-partner concurrency limit (all off by default)."""

    latency: float = 0.0
    """Seconds added to every answer of the service."""
    latency_per_record: float = 0.0
    """Seconds added per record served."""
    max_concurrent: int = 0
    """Requests of one partner answered at once; 0: no limit."""
    throttle_503_share: float = 0.0
    """Of the refusals for concurrency, the share answered 503 (the rest 429)."""
    retry_after: float = 1.0
    """The ``Retry-After`` of those refusals, in seconds (rounded up)."""
    seed: int | str = 0
    load: dict[str, PartnerLoad] = field(default_factory=dict, init=False)
    total: PartnerLoad = field(default_factory=lambda: PartnerLoad(), init=False)
    """Every partner's requests together."""
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.check()
        self._rng = random.Random(f"{self.seed}/throttle")

    def check(self) -> None:
        for name in ("latency", "latency_per_record", "retry_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise BehaviourError(f"{name} must be >= 0")
        if self.max_concurrent < 0:
            raise BehaviourError("max_concurrent must be >= 0 (0: no limit)")
        if not 0.0 <= self.throttle_503_share <= 1.0:
            raise BehaviourError("throttle_503_share is a share, between 0 and 1")

    # -- settings, as the admin API shows and takes them -----------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "latencyPerRecord": self.latency_per_record,
            "maxConcurrent": self.max_concurrent,
            "throttle503Share": self.throttle_503_share,
            "retryAfter": self.retry_after,
        }

    def update(self, body: dict[str, Any]) -> None:
        """Apply ``{"latency"?, "latencyPerRecord"?, "maxConcurrent"?, "throttle503Share"?,
        "retryAfter"?, "seed"?}``; all or nothing."""
        known = {"latency", "latencyPerRecord", "maxConcurrent", "throttle503Share", "retryAfter"}
        unknown = set(body) - known - {"seed"}
        if unknown:
            raise BehaviourError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        latency = parse_duration(body.get("latency", self.latency), "latency")
        per_record = parse_duration(
            body.get("latencyPerRecord", self.latency_per_record), "latencyPerRecord"
        )
        retry_after = parse_duration(body.get("retryAfter", self.retry_after), "retryAfter")
        limit = body.get("maxConcurrent", self.max_concurrent)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BehaviourError("maxConcurrent must be an integer >= 0 (0: no limit)")
        share = body.get("throttle503Share", self.throttle_503_share)
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise BehaviourError("throttle503Share is a share, between 0 and 1")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int | str) or isinstance(seed, bool)):
            raise BehaviourError("seed is an integer or a string")
        self.latency, self.latency_per_record, self.retry_after = latency, per_record, retry_after
        self.max_concurrent, self.throttle_503_share = limit, float(share)
        if seed is not None:
            self.seed = seed
            self._rng = random.Random(f"{seed}/throttle")

    # -- admission -------------------------------------------------------------------------------

    def admit(self, partner: str) -> bool:
        """Take a slot for one of ``partner``'s requests; False: refuse it (and count that)."""
        load = self.load.get(partner)
        if load is None:
            load = self.load[partner] = PartnerLoad()
        if self.max_concurrent and load.in_flight >= self.max_concurrent:
            load.throttled += 1
            self.total.throttled += 1
            return False
        for counted in (load, self.total):
            counted.admitted += 1
            counted.in_flight += 1
            counted.peak = max(counted.peak, counted.in_flight)
        return True

    def release(self, partner: str) -> None:
        load = self.load.get(partner)
        if load is not None and load.in_flight > 0:
            load.in_flight -= 1
            self.total.in_flight -= 1

    def refusal(self) -> int:
        """The status of the next refusal for concurrency: 429 or 503 (seeded)."""
        if self.throttle_503_share <= 0:
            return 429
        if self.throttle_503_share >= 1:
            return 503
        return 503 if self._rng.random() < self.throttle_503_share else 429

    def delay_for(self, records: int) -> float:
        return self.latency + self.latency_per_record * records

    async def wait(self, records: int, stopping: asyncio.Event) -> None:
        """Wait the latency of an answer serving ``records`` records (at once when stopping)."""
        delay = self.delay_for(records)
        if delay <= 0 or stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=delay)

    def load_snapshot(self) -> dict[str, dict[str, int]]:
        return {partner: load.to_json() for partner, load in sorted(self.load.items())}

    def reset_load(self) -> None:
        """Forget the counters; requests still in flight stay counted as such."""
        self.load = {
            partner: PartnerLoad(in_flight=load.in_flight, peak=load.in_flight)
            for partner, load in self.load.items()
            if load.in_flight
        }
        in_flight = self.total.in_flight
        self.total = PartnerLoad(in_flight=in_flight, peak=in_flight)


def partner_of(raw: bytes, partners: dict[int, str] | Any) -> str:
    """The partner a call's parameters name, as a statistics key; "unknown" when they name
    none that exists (or cannot be read)."""
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unknown"
    if not isinstance(params, dict):
        return "unknown"
    value = params.get("partnerId")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in partners:
        return str(value)
    return "unknown"
