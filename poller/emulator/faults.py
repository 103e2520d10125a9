"""Fault injection: what goes wrong, on which call.

Two families of faults:

* **transport faults** replace or disturb the whole HTTP exchange: an ASP.NET 500, throttling
  (429/503 with ``Retry-After``), a slow answer, a hang, a reset connection, a truncated body,
  a body that is not JSON, a ``d`` of the wrong shape;
* **record mutations** damage records in the served copy only (the store stays true): a missing
  id, an unreadable start time, mistyped fields, ``\\/Date(ms)\\/`` dates, an unknown status
  letter, unknown extra fields, null locations.

They are planned three ways: a queue ("the next N calls to operation X get fault F"), a rate
("each call has probability p of one of these faults", from a seeded RNG), and, for mutations,
a set of session ids damaged every time those sessions are served.

This module decides; the endpoint (``endpoint.py``) and the wire (``wire.py``) act.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from poller.emulator.sessions import Record

TRANSPORT_FAULTS = (
    "error500",
    "throttle429",
    "throttle503",
    "slow",
    "timeout",
    "reset",
    "truncate",
    "invalid_json",
    "bad_shape",
)
RECORD_MUTATIONS = (
    "missing_id",
    "bad_start_time",
    "mistyped",
    "ms_dates",
    "unknown_status",
    "extra_field",
    "null_location",
)
# Transport faults that only delay: the normal answer follows (mutations still apply).
DELAYS = frozenset({"slow", "timeout"})
DEFAULT_DELAY = {"slow": 2.0, "timeout": 300.0}
BAD_SHAPES = ("string", "users_not_list", "null", "no_d")
# A rate without kinds draws among the faults a client must simply retry through.
DEFAULT_RATE_KINDS = ("error500", "throttle429", "throttle503", "reset", "truncate", "invalid_json")

ALL_KINDS = frozenset(TRANSPORT_FAULTS) | frozenset(RECORD_MUTATIONS)


class FaultSpecError(ValueError):
    """A fault description the plan cannot accept."""


@dataclass(slots=True)
class FaultSpec:
    """One planned fault (see ``from_json`` for the admin API's field names)."""

    kind: str
    operation: str = "*"
    count: int = 1
    """Calls still to be faulted (ignored when ``session_ids`` makes the fault persistent)."""
    retry_after: float = 2.0
    retry_after_form: str = "seconds"
    delay: float | None = None
    session_ids: frozenset[int] = frozenset()
    records: str = "first"
    """Which records of a page a call-level mutation damages: "first" or "all"."""
    variant: str | None = None
    """For ``bad_shape``: one of BAD_SHAPES; None takes them in turn."""
    message: str | None = None
    """For ``error500``: the fault's Message."""

    @property
    def is_mutation(self) -> bool:
        return self.kind in RECORD_MUTATIONS

    def applies_to(self, operation: str) -> bool:
        return self.operation in ("*", operation)

    def delay_seconds(self) -> float:
        return self.delay if self.delay is not None else DEFAULT_DELAY.get(self.kind, 0.0)

    @classmethod
    def from_json(cls, obj: Any) -> FaultSpec:
        """Read an entry of ``POST /admin/faults``'s ``calls`` list.

        ``{"kind", "operation"?, "count"?, "retryAfter"?, "retryAfterForm"?, "delay"?,
        "sessionIds"?, "records"?, "variant"?, "message"?}``; a mutation may also be written
        ``{"kind": "mutation", "mutation": "missing_id", ...}``.
        """
        if not isinstance(obj, dict):
            raise FaultSpecError("a fault is an object with a 'kind'")
        kind = obj.get("kind")
        if kind in ("mutation", "mutate") or (kind is None and "mutation" in obj):
            kind = obj.get("mutation")
        if kind not in ALL_KINDS:
            raise FaultSpecError(f"unknown fault kind {kind!r}; known: {sorted(ALL_KINDS)}")
        spec = cls(
            kind=kind,
            operation=_text(obj, "operation", "*"),
            count=_integer(obj, "count", 1, minimum=1),
            retry_after=_number(obj, "retryAfter", 2.0) or 0.0,
            retry_after_form=_choice(obj, "retryAfterForm", ("seconds", "date")),
            delay=_number(obj, "delay", None),
            session_ids=_session_ids(obj),
            records=_choice(obj, "records", ("first", "all")),
            variant=_optional_choice(obj, "variant", BAD_SHAPES),
            message=_optional_text(obj, "message"),
        )
        if spec.session_ids and not spec.is_mutation:
            raise FaultSpecError("sessionIds only goes with a record mutation")
        return spec

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"kind": self.kind, "operation": self.operation}
        if self.session_ids:
            shown["sessionIds"] = sorted(self.session_ids)
        else:
            shown["count"] = self.count
        if self.kind in ("throttle429", "throttle503"):
            shown["retryAfter"] = self.retry_after
            shown["retryAfterForm"] = self.retry_after_form
        if self.kind in DELAYS:
            shown["delay"] = self.delay_seconds()
        if self.is_mutation and not self.session_ids:
            shown["records"] = self.records
        if self.variant is not None:
            shown["variant"] = self.variant
        if self.message is not None:
            shown["message"] = self.message
        return shown


@dataclass(slots=True)
class FaultRate:
    """Each call (to ``operation``, or any) gets one of ``kinds`` with probability ``p``."""

    p: float
    kinds: tuple[str, ...] = DEFAULT_RATE_KINDS
    seed: int = 0
    operation: str = "*"
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise FaultSpecError("p is a probability, between 0 and 1")
        unknown = [kind for kind in self.kinds if kind not in ALL_KINDS]
        if unknown or not self.kinds:
            raise FaultSpecError(f"unknown or no fault kinds: {unknown}")
        self.rng = random.Random(self.seed)

    @classmethod
    def from_json(cls, obj: Any) -> FaultRate:
        """``{"p": 0.2, "kinds"?: [...], "seed"?: 7, "operation"?: "*"}``."""
        if not isinstance(obj, dict):
            raise FaultSpecError("a rate is an object with 'p'")
        kinds = obj.get("kinds", list(DEFAULT_RATE_KINDS))
        if isinstance(kinds, str):
            kinds = [kind.strip() for kind in kinds.split(",") if kind.strip()]
        if not isinstance(kinds, list):
            raise FaultSpecError("kinds is a list of fault kinds")
        p = _number(obj, "p", None)
        if p is None:
            raise FaultSpecError("a rate needs 'p'")
        return cls(
            p=p,
            kinds=tuple(kinds),
            seed=_integer(obj, "seed", 0, minimum=None),
            operation=_text(obj, "operation", "*"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "kinds": list(self.kinds),
            "seed": self.seed,
            "operation": self.operation,
        }

    def draw(self, operation: str) -> str | None:
        if self.operation not in ("*", operation) or self.rng.random() >= self.p:
            return None
        return self.kinds[int(self.rng.random() * len(self.kinds))]


@dataclass(slots=True)
class CallFaults:
    """What the plan decided for one call."""

    transport: FaultSpec | None = None
    mutations: list[FaultSpec] = field(default_factory=list)

    def mutations_at(self, position: int) -> list[str]:
        """Mutation kinds for the record at this position on the page."""
        return [
            spec.kind
            for spec in self.mutations
            if spec.records == "all" or position == 0 or spec.kind == "ms_dates"
        ]

    @property
    def ms_dates(self) -> bool:
        """``ms_dates`` as a call-level mutation means the whole response."""
        return any(spec.kind == "ms_dates" for spec in self.mutations)


class FaultPlan:
    """Queued, rate-based and persistent faults, consumed as calls arrive."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._queue: list[FaultSpec] = []
        self._persistent: list[FaultSpec] = []
        self._persistent_by_id: dict[int, list[FaultSpec]] = {}
        self.rate: FaultRate | None = None
        self._shape_turn = 0

    def add(self, spec: FaultSpec) -> None:
        if spec.session_ids:
            self._persistent.append(spec)
            for session_id in spec.session_ids:
                self._persistent_by_id.setdefault(session_id, []).append(spec)
        else:
            self._queue.append(spec)

    def describe(self) -> dict[str, Any]:
        return {
            "calls": [spec.to_json() for spec in (*self._queue, *self._persistent)],
            "rate": None if self.rate is None else self.rate.to_json(),
        }

    def draw(self, operation: str, *, serves_records: bool) -> CallFaults:
        """Decide (and consume) the faults of one call to ``operation``."""
        decided = CallFaults(transport=self._take_transport(operation))
        if decided.transport is None and self.rate is not None:
            kind = self.rate.draw(operation)
            if kind in TRANSPORT_FAULTS:
                decided.transport = FaultSpec(kind=kind)
            elif kind is not None and serves_records:
                decided.mutations.append(FaultSpec(kind=kind))
        if serves_records and (decided.transport is None or decided.transport.kind in DELAYS):
            decided.mutations.extend(self._take_mutations(operation))
        return decided

    def persistent_mutations(self, session_id: int, operation: str) -> list[str]:
        specs = self._persistent_by_id.get(session_id)
        if not specs:
            return []
        return [spec.kind for spec in specs if spec.applies_to(operation)]

    def next_bad_shape(self, spec: FaultSpec) -> str:
        if spec.variant is not None:
            return spec.variant
        shape = BAD_SHAPES[self._shape_turn % len(BAD_SHAPES)]
        self._shape_turn += 1
        return shape

    def _take_transport(self, operation: str) -> FaultSpec | None:
        for spec in self._queue:
            if not spec.is_mutation and spec.applies_to(operation):
                self._consume(spec)
                return spec
        return None

    def _take_mutations(self, operation: str) -> list[FaultSpec]:
        taken = [s for s in self._queue if s.is_mutation and s.applies_to(operation)]
        for spec in taken:
            self._consume(spec)
        return taken

    def _consume(self, spec: FaultSpec) -> None:
        spec.count -= 1
        if spec.count <= 0:
            self._queue.remove(spec)


def mutate_record(record: Record, kind: str) -> None:
    """Damage a served record in place (the caller passes a copy, never the stored record)."""
    guests = [g for g in record.get("guests") or [] if isinstance(g, dict)]
    if kind == "missing_id":
        record.pop("id", None)
    elif kind == "bad_start_time":
        record["startTime"] = "2020-02-30T25:61:00Z"
    elif kind == "mistyped":
        record["duration"] = "abc"
        record["width"] = "wide"
    elif kind == "unknown_status":
        record["status"] = "Z"
    elif kind == "extra_field":
        record["emulatorExtra"] = {"note": "a field no client has heard of", "level": 2}
        if guests:
            guests[0]["emulatorGuestExtra"] = "unexpected"
    elif kind == "null_location":
        for guest in guests:
            guest["location"] = None
    elif kind != "ms_dates":  # ms_dates is a rendering option, applied before
        raise ValueError(f"not a record mutation: {kind}")


def damaged_copy(record: Record, kinds: list[str]) -> Record:
    """A deep copy of ``record`` with the mutations applied."""
    copy: Record = orjson.loads(orjson.dumps(record))
    for kind in kinds:
        mutate_record(copy, kind)
    return copy


def _text(obj: dict[str, Any], name: str, default: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        raise FaultSpecError(f"{name} must be a string")
    return value


def _optional_text(obj: dict[str, Any], name: str) -> str | None:
    return None if obj.get(name) is None else _text(obj, name, "")


def _integer(obj: dict[str, Any], name: str, default: int, *, minimum: int | None) -> int:
    value = obj.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FaultSpecError(f"{name} must be an integer")
    if minimum is not None and value < minimum:
        raise FaultSpecError(f"{name} must be >= {minimum}")
    return value


def _number(obj: dict[str, Any], name: str, default: float | None) -> float | None:
    value = obj.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise FaultSpecError(f"{name} must be a number >= 0")
    return float(value)


def _choice(obj: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(name, allowed[0])
    if value not in allowed:
        raise FaultSpecError(f"{name} must be one of {list(allowed)}")
    return str(value)


def _optional_choice(obj: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    return None if obj.get(name) is None else _choice(obj, name, allowed)


def _session_ids(obj: dict[str, Any]) -> frozenset[int]:
    value = obj.get("sessionIds", [])
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise FaultSpecError("sessionIds must be a list of session ids")
    return frozenset(value)
