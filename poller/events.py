"""Upstream record -> Kafka event: normalisation, deterministic ids, CloudEvents headers.

The value shape is the consumers' contract (design.md §3, ``schemas/``). Anything that
cannot take that shape raises BadRecord, and becomes a dead letter carrying the raw record.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeGuard

import orjson

from poller.errors import BadRecord
from poller.glance.dates import parse_returned, to_event
from poller.glance.paging import Window
from poller.glance.records import SourceRecord
from poller.settings import TopicSettings

# Fixed forever: changing it changes every event id and breaks consumers' dedup.
EVENT_ID_NAMESPACE = uuid.UUID("6f0b8a4e-3c1d-5e7f-9a2b-1c4d5e6f7a8b")
CE_TYPE_PREFIX = "net.glance.session."
PII_FIELDS = ("name", "email", "phone", "ip")
PiiMode = Literal["keep", "hash", "drop"]
EventType = Literal["started", "completed"]


Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    # What the state needs to remember of it; None for dead letters.
    session_id: int | None = None
    start_time: datetime | None = None


@dataclass(frozen=True)
class CountsSnapshot:
    """PartnerSessionCounts rows (type, status, count, averageDuration) for one day."""

    as_of: datetime
    day: Window
    active: list[dict[str, Any]]
    completed: list[dict[str, Any]]


def event_id(partner_id: int, session_id: int, event_type: str) -> str:
    """The same session and event type always get the same id: consumers dedup on it."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{partner_id}/{session_id}/{event_type}"))


class PiiPolicy:
    """What happens to a guest's name, email, phone and ip."""

    def __init__(self, mode: PiiMode, salt: str | None = None) -> None:
        if mode == "hash" and not salt:
            raise ValueError("the hash PII policy needs a salt")
        self.mode = mode
        self._salt = (salt or "").encode()

    def apply(self, guest: dict[str, Any]) -> None:
        if self.mode == "keep":
            return
        for field in PII_FIELDS:
            if field not in guest:
                continue
            if self.mode == "drop":
                del guest[field]
            elif guest[field] is not None:
                digest = hmac.new(self._salt, str(guest[field]).encode(), hashlib.sha256)
                guest[field] = "sha256:" + digest.hexdigest()


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(condition: bool, reason: str, record: Any) -> None:
    if not condition:
        raise BadRecord(reason, record)


_FIELD_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("type", lambda v: isinstance(v, str), "a string"),
    ("status", lambda v: isinstance(v, str), "a string"),
    ("width", _is_number, "a number"),
    ("height", _is_number, "a number"),
    ("kbytes", _is_number, "a number"),
    ("isReverse", lambda v: isinstance(v, bool), "a boolean"),
)


def _normalise_date(owner: dict[str, Any], field: str, where: str, raw: Any) -> None:
    value = owner.get(field)
    if value is None:
        return
    try:
        owner[field] = to_event(parse_returned(value))
    except ValueError as exc:
        raise BadRecord(f"{where}{field} is not a date: {exc}", raw) from None


def _normalise_guest(guest: Any, index: int, pii: PiiPolicy, raw: Any) -> dict[str, Any]:
    where = f"guests[{index}]."
    _check(isinstance(guest, dict), f"guests[{index}] is not an object", raw)
    out = {k: v for k, v in guest.items() if k != "__type"}
    _normalise_date(out, "startTime", where, raw)
    for field in ("duration", "kbytes"):
        value = out.get(field)
        _check(value is None or _is_number(value), f"{where}{field} is not a number", raw)
    location = out.get("location")
    _check(location is None or isinstance(location, dict), f"{where}location is not an object", raw)
    if isinstance(location, dict) and "__type" in location:
        out["location"] = {k: v for k, v in location.items() if k != "__type"}
    pii.apply(out)
    return out


def normalise_session(
    raw: Any, pii: PiiPolicy, *, ended: bool
) -> tuple[dict[str, Any], int, datetime, datetime | None]:
    """The record as consumers see it, with its id, start and (if ended) end time."""
    _check(isinstance(raw, dict), "the session record is not an object", raw)
    session: dict[str, Any] = {k: v for k, v in raw.items() if k != "__type"}
    session_id = session.get("id")
    if not _is_int(session_id) or session_id <= 0:
        raise BadRecord("id is missing or not a positive integer", raw)
    try:
        start = parse_returned(session.get("startTime"))
    except ValueError as exc:
        raise BadRecord(f"startTime is missing or not a date: {exc}", raw) from None
    session["startTime"] = to_event(start)
    for field, accepts, kind in _FIELD_CHECKS:
        value = session.get(field)
        _check(value is None or accepts(value), f"{field} is not {kind}", raw)
    key = session.get("key")
    if key is not None:
        _check(isinstance(key, str | int) and not isinstance(key, bool), "key is not text", raw)
        session["key"] = str(key)
    end: datetime | None = None
    duration = session.get("duration")
    if ended:
        if not _is_number(duration) or not math.isfinite(duration) or duration < 0:
            raise BadRecord("duration is missing, not a number or negative", raw)
        try:
            end = start + timedelta(seconds=duration)
        except OverflowError:
            raise BadRecord("duration is out of range", raw) from None
        session["endTime"] = to_event(end)
    else:
        _check(duration is None or _is_number(duration), "duration is not a number", raw)
    guests = session.get("guests")
    _check(guests is None or isinstance(guests, list), "guests is not a list", raw)
    if isinstance(guests, list):
        session["guests"] = [_normalise_guest(g, i, pii, raw) for i, g in enumerate(guests)]
    return session, session_id, start, end


class EventBuilder:
    """Builds one partner's events; the topics and the PII policy are fixed per process."""

    def __init__(self, partner_id: int, topics: TopicSettings, pii: PiiPolicy) -> None:
        self.partner_id = partner_id
        self._topics = topics
        self._pii = pii
        self._source = f"/glance/partners/{partner_id}".encode()

    def completed(self, record: SourceRecord) -> Event:
        return self._session_event(record, "completed", None)

    def started(self, record: SourceRecord, *, observed_active: bool) -> Event:
        """``observed_active`` is false when the session was first seen already ended."""
        return self._session_event(record, "started", observed_active)

    def _session_event(
        self, record: SourceRecord, event_type: EventType, observed_active: bool | None
    ) -> Event:
        ended = event_type == "completed"
        raw = record.raw
        for field, value in (
            ("userName", record.user_name),
            ("partnerUserId", record.partner_user_id),
        ):
            _check(value is None or isinstance(value, str), f"{field} is not a string", raw)
        session, session_id, start, end = normalise_session(raw, self._pii, ended=ended)
        body: dict[str, Any] = {
            "partnerId": self.partner_id,
            "userName": record.user_name,
            "partnerUserId": record.partner_user_id,
        }
        if observed_active is not None:
            body["observedActive"] = observed_active
        body["session"] = session
        value = orjson.dumps(body)
        subject = str(session_id).encode()
        occurred = end if end is not None else start
        headers = self._headers(
            event_id(self.partner_id, session_id, event_type), event_type, occurred, subject
        )
        topic = self._topics.completed if ended else self._topics.started
        return Event(topic, subject, value, headers, session_id, start)

    def _headers(self, ce_id: str, event_type: str, occurred: datetime, subject: bytes) -> Headers:
        return [
            ("ce_specversion", b"1.0"),
            ("ce_id", ce_id.encode()),
            ("ce_source", self._source),
            ("ce_type", (CE_TYPE_PREFIX + event_type).encode()),
            ("ce_time", to_event(occurred).encode()),
            ("ce_subject", subject),
            ("content-type", b"application/json"),
        ]

    def counts(self, snapshot: CountsSnapshot) -> Event:
        """One snapshot of the day's session counts; keyed by partner, one id per instant."""
        as_of = to_event(snapshot.as_of)
        value = orjson.dumps(
            {
                "partnerId": self.partner_id,
                "asOf": as_of,
                "day": snapshot.day.start.date().isoformat(),
                "rangeStart": to_event(snapshot.day.start),
                "rangeEnd": to_event(snapshot.day.end),
                "active": snapshot.active,
                "completed": snapshot.completed,
                "totals": {
                    "active": sum(row["count"] for row in snapshot.active),
                    "completed": sum(row["count"] for row in snapshot.completed),
                },
            }
        )
        key = str(self.partner_id).encode()
        ce_id = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{self.partner_id}/counts/{as_of}"))
        headers = self._headers(ce_id, "counts", snapshot.as_of, key)
        return Event(self._topics.counts, key, value, headers)

    def dead_letter(self, record: SourceRecord, reason: str, operation: str) -> Event:
        """The raw record as value; why, whose and from where in the headers."""
        raw = record.raw
        session_id = raw.get("id") if isinstance(raw, dict) else None
        key = str(session_id).encode() if _is_int(session_id) else None
        headers: Headers = [
            ("dlq_reason", reason.encode()),
            ("dlq_partner_id", str(self.partner_id).encode()),
            ("dlq_operation", operation.encode()),
            ("content-type", b"application/json"),
        ]
        for name, value in (
            ("dlq_user_name", record.user_name),
            ("dlq_partner_user_id", record.partner_user_id),
        ):
            if isinstance(value, str):
                headers.append((name, value.encode()))
        return Event(self._topics.dlq, key, orjson.dumps(raw), headers)
