"""Fault injection: what goes wrong, on which call.

Two families of faults:

* **transport faults** replace or disturb the whole HTTP exchange: an ASP.NET 500, throttling
  (429/503 with ``Retry-After``), a slow answer, a hang, a reset connection, a truncated body,
  a body that is not JSON, a ``d`` of the wrong shape;
* **record mutations** damage records in the served copy only (the store stays true): a missing
  id, an unreadable start time, mistyped fields, ``\\/Date(ms)\\/`` dates, an unknown status
  letter, unknown extra fields, null locations, a guest list of thousands (a record too large
  for a default Kafka message);
* **answer modifiers** bend an otherwise normal answer, and stack with the rest: a ``Date``
  header off by an offset or a jitter, a page with more records than ``nResults`` asked for or
  a body padded to a size, a ``nextId`` no 64-bit integer holds (or negative).

A redirect (301/302/307/308 with a ``Location``, by default to another origin) is a transport
fault: it replaces the answer.

They are planned three ways: a queue ("the next N calls to operation X get fault F"), a rate
("each call has probability p of one of these faults", from a seeded RNG), and, for mutations,
a set of session ids damaged every time those sessions are served.

This module decides; the endpoint (``endpoint.py``) and the wire (``wire.py``) act.
"""

from __future__ import annotations

import math
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
    "redirect",
)
ANSWER_MODIFIERS = ("date_skew", "oversized", "bad_next_id")
RECORD_MUTATIONS = (
    "missing_id",
    "bad_start_time",
    "mistyped",
    "ms_dates",
    "unknown_status",
    "extra_field",
    "null_location",
    "huge_guests",
)
# Transport faults that only delay: the normal answer follows (mutations still apply).
DELAYS = frozenset({"slow", "timeout"})
DEFAULT_DELAY = {"slow": 2.0, "timeout": 300.0}
BAD_SHAPES = ("string", "users_not_list", "null", "no_d")
# A rate without kinds draws among the faults a client must simply retry through.
DEFAULT_RATE_KINDS = ("error500", "throttle429", "throttle503", "reset", "truncate", "invalid_json")

ALL_KINDS = frozenset(TRANSPORT_FAULTS) | frozenset(ANSWER_MODIFIERS) | frozenset(RECORD_MUTATIONS)
REDIRECT_STATUSES = (301, 302, 307, 308)
# Where a redirect points unless told: another origin, one that never resolves (RFC 2606).
DEFAULT_REDIRECT_ORIGIN = "https://redirect.invalid"
DEFAULT_NEXT_ID = 2**70
DEFAULT_HUGE_GUESTS = 10_000
MAX_PAD_BYTES = 2**31
MAX_DATE_OFFSET = 200 * 366 * 86_400  # two centuries, either way


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
    exception_type: str | None = None
    """For ``error500``: the fault's ExceptionType (an ASP.NET class name)."""
    offset: float = 0.0
    """For ``date_skew``: seconds added to the ``Date`` header (negative: behind)."""
    jitter: float = 0.0
    """For ``date_skew``: plus a uniform draw in [-jitter, +jitter] seconds, seeded."""
    seed: int = 0
    """For ``date_skew``: the seed of the jitter's draws."""
    status: int = 302
    """For ``redirect``: 301, 302, 307 or 308."""
    location: str | None = None
    """For ``redirect``: the ``Location``; None: the same path on another origin."""
    extra_records: int = 0
    """For ``oversized``: records served beyond ``nResults``."""
    pad_bytes: int = 0
    """For ``oversized``: the body is padded (JSON whitespace) to at least this many bytes."""
    next_id: int = DEFAULT_NEXT_ID
    """For ``bad_next_id``: the ``nextId`` served, whatever its size or sign."""
    guests: int = DEFAULT_HUGE_GUESTS
    """For ``huge_guests``: how many guests the record gets."""
    rng: random.Random | None = field(default=None, repr=False, compare=False)

    @property
    def is_mutation(self) -> bool:
        return self.kind in RECORD_MUTATIONS

    @property
    def is_modifier(self) -> bool:
        return self.kind in ANSWER_MODIFIERS

    @property
    def needs_listing(self) -> bool:
        """Only a listing's answer can carry it (it changes records or ``nextId``)."""
        return self.kind == "bad_next_id" or (self.kind == "oversized" and self.extra_records > 0)

    def skew_seconds(self) -> float:
        """For ``date_skew``: the offset of one answer's ``Date``."""
        if not self.jitter:
            return self.offset
        if self.rng is None:
            self.rng = random.Random(f"{self.seed}/date_skew")
        return self.offset + self.rng.uniform(-self.jitter, self.jitter)

    def applies_to(self, operation: str) -> bool:
        return self.operation in ("*", operation)

    def delay_seconds(self) -> float:
        return self.delay if self.delay is not None else DEFAULT_DELAY.get(self.kind, 0.0)

    @classmethod
    def from_json(cls, obj: Any) -> FaultSpec:
        """Read an entry of ``POST /admin/faults``'s ``calls`` list.

        ``{"kind", "operation"?, "count"?, "retryAfter"?, "retryAfterForm"?, "delay"?,
        "sessionIds"?, "records"?, "variant"?, "message"?}``, and per kind: ``error500``
        ``{"exceptionType"?}``; ``date_skew`` ``{"offset"?, "jitter"?, "seed"?}`` (seconds);
        ``redirect`` ``{"status"?, "location"?}``; ``oversized`` ``{"extraRecords"?,
        "padBytes"?}``; ``bad_next_id`` ``{"nextId"?}`` (an integer of any size, or its decimal
        text); ``huge_guests`` ``{"guests"?}``. A mutation
        may also be written ``{"kind": "mutation", "mutation": "missing_id", ...}``.
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
            exception_type=_optional_text(obj, "exceptionType"),
            offset=_signed_number(obj, "offset", 0.0),
            jitter=_number(obj, "jitter", 0.0) or 0.0,
            seed=_integer(obj, "seed", 0, minimum=None),
            status=_redirect_status(obj),
            location=_optional_text(obj, "location"),
            extra_records=_integer(obj, "extraRecords", 0, minimum=0),
            pad_bytes=_integer(obj, "padBytes", 0, minimum=0),
            next_id=_big_integer(obj, "nextId", DEFAULT_NEXT_ID),
            guests=_integer(obj, "guests", DEFAULT_HUGE_GUESTS, minimum=0),
        )
        if spec.session_ids and not spec.is_mutation:
            raise FaultSpecError("sessionIds only goes with a record mutation")
        if abs(spec.offset) > MAX_DATE_OFFSET:
            raise FaultSpecError(f"offset is at most {MAX_DATE_OFFSET:g} seconds either way")
        if spec.pad_bytes > MAX_PAD_BYTES:
            raise FaultSpecError(f"padBytes is at most {MAX_PAD_BYTES}")
        if spec.kind == "oversized" and not (spec.extra_records or spec.pad_bytes):
            raise FaultSpecError("oversized needs extraRecords or padBytes (or both)")
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
        if self.exception_type is not None:
            shown["exceptionType"] = self.exception_type
        if self.kind == "date_skew":
            shown.update(offset=self.offset, jitter=self.jitter, seed=self.seed)
        elif self.kind == "redirect":
            shown.update(status=self.status, location=self.location)
        elif self.kind == "oversized":
            shown.update(extraRecords=self.extra_records, padBytes=self.pad_bytes)
        elif self.kind == "bad_next_id":
            # As text: a JSON number beyond 64 bits does not survive most parsers.
            shown["nextId"] = str(self.next_id)
        elif self.kind == "huge_guests":
            shown["guests"] = self.guests
        return shown


@dataclass(slots=True)
class FaultRate:
    """Each call (to ``operation``, or any) gets one of ``kinds`` with probability ``p``."""

    p: float
    kinds: tuple[str, ...] = DEFAULT_RATE_KINDS
    seed: int = 0
    operation: str = "*"
    params: dict[str, Any] = field(default_factory=dict)
    """Fields given to every drawn fault (``{"jitter": 3}``, ``{"delay": 0.5}``...)."""
    rng: random.Random = field(init=False, repr=False)
    specs: dict[str, FaultSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise FaultSpecError("p is a probability, between 0 and 1")
        unknown = [kind for kind in self.kinds if kind not in ALL_KINDS]
        if unknown or not self.kinds:
            raise FaultSpecError(f"unknown or no fault kinds: {unknown}")
        # Built once (parameters a drawn fault could not take are refused now), and kept: a
        # jittered Date keeps drawing from one seeded sequence.
        self.specs = {kind: self._build(kind) for kind in self.kinds}
        self.rng = random.Random(self.seed)

    def spec(self, kind: str) -> FaultSpec:
        """The fault of a draw of ``kind``."""
        return self.specs[kind]

    def _build(self, kind: str) -> FaultSpec:
        blocked = {"kind", "mutation", "count", "sessionIds", "operation"} & self.params.keys()
        if blocked:
            raise FaultSpecError(f"a rate's params cannot set {sorted(blocked)}")
        try:
            spec = FaultSpec.from_json({**self.params, "kind": kind})
        except FaultSpecError as exc:
            raise FaultSpecError(f"{kind}: {exc}") from None
        if spec.kind == "date_skew":
            spec.seed = self.seed
        return spec

    @classmethod
    def from_json(cls, obj: Any) -> FaultRate:
        """``{"p": 0.2, "kinds"?: [...], "seed"?: 7, "operation"?: "*", "params"?: {...}}``."""
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
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise FaultSpecError("params is an object of fault fields")
        return cls(
            p=p,
            kinds=tuple(kinds),
            seed=_integer(obj, "seed", 0, minimum=None),
            operation=_text(obj, "operation", "*"),
            params=params,
        )

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "p": self.p,
            "kinds": list(self.kinds),
            "seed": self.seed,
            "operation": self.operation,
        }
        if self.params:
            shown["params"] = self.params
        return shown

    def draw(self, operation: str) -> str | None:
        if self.operation not in ("*", operation) or self.rng.random() >= self.p:
            return None
        return self.kinds[int(self.rng.random() * len(self.kinds))]


@dataclass(slots=True)
class CallFaults:
    """What the plan decided for one call."""

    transport: FaultSpec | None = None
    mutations: list[FaultSpec] = field(default_factory=list)
    modifiers: list[FaultSpec] = field(default_factory=list)

    def mutations_at(self, position: int) -> list[FaultSpec]:
        """Mutations for the record at this position on the page."""
        return [
            spec
            for spec in self.mutations
            if spec.records == "all" or position == 0 or spec.kind == "ms_dates"
        ]

    def modifier(self, kind: str) -> FaultSpec | None:
        return next((spec for spec in self.modifiers if spec.kind == kind), None)

    def date_skew(self) -> float:
        """Seconds to add to this call's ``Date`` header."""
        spec = self.modifier("date_skew")
        return 0.0 if spec is None else spec.skew_seconds()

    @property
    def extra_records(self) -> int:
        return sum(spec.extra_records for spec in self.modifiers if spec.kind == "oversized")

    @property
    def pad_bytes(self) -> int:
        return max((s.pad_bytes for s in self.modifiers if s.kind == "oversized"), default=0)

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
        drawn: FaultSpec | None = None
        if decided.transport is None and self.rate is not None:
            kind = self.rate.draw(operation)
            drawn = None if kind is None else self.rate.spec(kind)
            if drawn is not None and drawn.kind in TRANSPORT_FAULTS:
                decided.transport, drawn = drawn, None
        answered = decided.transport is None or decided.transport.kind in DELAYS
        if drawn is not None and drawn.is_modifier:
            if answered and (serves_records or not drawn.needs_listing):
                decided.modifiers.append(drawn)
        elif drawn is not None and serves_records and answered:
            decided.mutations.append(drawn)
        decided.modifiers.extend(self._take_modifiers(operation, serves_records, answered))
        if serves_records and answered:
            decided.mutations.extend(self._take_mutations(operation))
        return decided

    def persistent_mutations(self, session_id: int, operation: str) -> list[FaultSpec]:
        specs = self._persistent_by_id.get(session_id)
        if not specs:
            return []
        return [spec for spec in specs if spec.applies_to(operation)]

    def next_bad_shape(self, spec: FaultSpec) -> str:
        if spec.variant is not None:
            return spec.variant
        shape = BAD_SHAPES[self._shape_turn % len(BAD_SHAPES)]
        self._shape_turn += 1
        return shape

    def _take_transport(self, operation: str) -> FaultSpec | None:
        for spec in self._queue:
            if spec.kind in TRANSPORT_FAULTS and spec.applies_to(operation):
                self._consume(spec)
                return spec
        return None

    def _take_mutations(self, operation: str) -> list[FaultSpec]:
        taken = [s for s in self._queue if s.is_mutation and s.applies_to(operation)]
        for spec in taken:
            self._consume(spec)
        return taken

    def _take_modifiers(
        self, operation: str, serves_records: bool, answered: bool
    ) -> list[FaultSpec]:
        """The queued modifiers this call can carry, one of each kind (first queued first).

        A ``Date`` skew goes on any answer; the others need the service's own answer, and
        those that change records or ``nextId`` need a listing.
        """
        taken: dict[str, FaultSpec] = {}
        for spec in self._queue:
            if not spec.is_modifier or spec.kind in taken or not spec.applies_to(operation):
                continue
            if spec.kind != "date_skew" and (
                not answered or (spec.needs_listing and not serves_records)
            ):
                continue
            taken[spec.kind] = spec
        for spec in taken.values():
            self._consume(spec)
        return list(taken.values())

    def _consume(self, spec: FaultSpec) -> None:
        spec.count -= 1
        if spec.count <= 0:
            self._queue.remove(spec)


def mutate_record(record: Record, kind: str, *, guest_count: int = DEFAULT_HUGE_GUESTS) -> None:
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
    elif kind == "huge_guests":
        record["guests"] = huge_guest_list(record, guest_count)
    elif kind != "ms_dates":  # ms_dates is a rendering option, applied before
        raise ValueError(f"not a record mutation: {kind}")


def huge_guest_list(record: Record, count: int) -> list[Record]:
    """``count`` plausible guests (about 230 bytes each as JSON): 10,000 of them make a record
    of more than 2 MB, beyond Kafka's default message size of 1 MB."""
    start = record.get("startTime")
    status = record.get("status")
    duration = record.get("duration") if isinstance(record.get("duration"), int) else 0
    return [
        {
            "type": "guest",
            "status": status,
            "startTime": start,
            "duration": duration,
            "kbytes": index % 97,
            "ip": f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}",
            "location": {"city": "Springfield", "region": "IL", "countryCode": "US"},
            "name": f"Guest Number {index:05d}",
            "email": f"guest.number.{index:05d}@example.com",
            "phone": f"555-{index:07d}",
        }
        for index in range(count)
    ]


def damaged_copy(record: Record, specs: list[FaultSpec]) -> Record:
    """A deep copy of ``record`` with the mutations applied."""
    copy: Record = orjson.loads(orjson.dumps(record))
    for spec in specs:
        mutate_record(copy, spec.kind, guest_count=spec.guests)
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


def _signed_number(obj: dict[str, Any], name: str, default: float) -> float:
    value = obj.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise FaultSpecError(f"{name} must be a number")
    return float(value)


def _big_integer(obj: dict[str, Any], name: str, default: int) -> int:
    """An integer of any size: a JSON integer, an integral number, or its decimal text (JSON
    parsers, orjson included, turn integers beyond 64 bits into floats)."""
    value = obj.get(name, default)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise FaultSpecError(f"{name} must be an integer (or its decimal text)") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FaultSpecError(f"{name} must be an integer (or its decimal text)")
    return value


def _redirect_status(obj: dict[str, Any]) -> int:
    value = obj.get("status", 302)
    if value not in REDIRECT_STATUSES or isinstance(value, bool):
        raise FaultSpecError(f"status must be one of {list(REDIRECT_STATUSES)}")
    return int(value)


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
