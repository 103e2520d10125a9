"""Upstream record -> Kafka event: normalisation, deterministic ids, CloudEvents headers.

The value shape is the consumers' contract (design.md §3, ``schemas/``). Anything that
cannot take that shape raises BadRecord, and becomes a dead letter carrying the raw record.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeGuard

import orjson

from poller.cursor import MAX_STORED_INT
from poller.errors import BadRecord
from poller.glance.dates import returned_for_event, to_event
from poller.glance.records import SourceRecord
from poller.settings import EventSettings, TopicSettings
from poller.window import Window

# Fixed forever: changing it changes every event id and breaks consumers' dedup.
EVENT_ID_NAMESPACE = uuid.UUID("6f0b8a4e-3c1d-5e7f-9a2b-1c4d5e6f7a8b")
CE_TYPE_PREFIX = "net.glance.session."
PII_FIELDS = ("name", "email", "phone", "ip")
PiiMode = Literal["keep", "hash", "drop"]
EventType = Literal["started", "completed"]


Header = tuple[str, bytes]
Headers = list[Header]

# The headers every event of a kind shares, made once.
_SPEC_VERSION = ("ce_specversion", b"1.0")
_CONTENT_TYPE = ("content-type", b"application/json")
_TYPE_HEADERS = {
    kind: ("ce_type", (CE_TYPE_PREFIX + kind).encode())
    for kind in ("started", "completed", "counts")
}


def to_json(value: Any) -> bytes:
    """``value`` as JSON, in a buffer of its own size. orjson (3.12 on) hands back its working
    buffer, at least 4 KiB and grown by doubling, without trimming it: an 830-byte event value
    held 8 KiB for as long as its event awaited its acknowledgement. The copy costs about
    0.2 µs."""
    return b"".join((orjson.dumps(value), b""))  # two parts: join copies, exactly


class Event(NamedTuple):
    """A named tuple rather than a dataclass: one is made per session, and a tuple is made
    several times faster."""

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
    """The same session and event type always get the same id: consumers dedup on it.

    It is ``uuid.uuid5(EVENT_ID_NAMESPACE, "<partner>/<session>/<type>")``, written out from
    the SHA-1 digest's hex without the UUID object (which costs more than the rest of the
    event's headers together)."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(f"{partner_id}/{session_id}/{event_type}".encode())
    h = digest.hexdigest()
    # The version nibble becomes 5 and the variant bits 10 (RFC 4122).
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}
# SHA-1 because UUIDv5 is defined with it: a name-based id, not a security measure. The
# namespace is hashed once; each id continues from a copy.
_NAMESPACE_SHA1 = hashlib.sha1(EVENT_ID_NAMESPACE.bytes, usedforsecurity=False)


class PiiPolicy:
    """What happens to a guest's name, email, phone and ip."""

    def __init__(self, mode: PiiMode, salt: str | None = None) -> None:
        if mode == "hash" and not salt:
            raise ValueError("the hash PII policy needs a salt")
        self.mode = mode
        self._salt = (salt or "").encode()

    @classmethod
    def from_settings(cls, events: EventSettings) -> PiiPolicy:
        salt = events.pii_salt
        return cls(events.pii, salt.get_secret_value() if salt else None)

    def apply(self, guest: dict[str, Any]) -> None:
        if self.mode == "keep":
            return
        for field in PII_FIELDS:
            if field not in guest:
                continue
            if self.mode == "drop":
                del guest[field]
            elif guest[field] is not None:
                guest[field] = self._hashed(guest[field])

    def scrubbed(self, raw: Any) -> Any:
        """A raw record with the policy applied to its guests (for dead letters): a copy,
        the record itself untouched; anything not shaped like guests is left as it is."""
        if self.mode == "keep" or not isinstance(raw, dict):
            return raw
        guests = raw.get("guests")
        if not isinstance(guests, list):
            return raw
        copies = []
        for guest in guests:
            if isinstance(guest, dict):
                guest = dict(guest)
                self.apply(guest)
            copies.append(guest)
        return {**raw, "guests": copies}

    def _hashed(self, value: Any) -> str:
        digest = hmac.new(self._salt, str(value).encode(), hashlib.sha256)
        return "sha256:" + digest.hexdigest()


def _is_int(value: Any) -> TypeGuard[int]:
    return type(value) is int  # orjson makes no subclasses; this rules out bool


_NUMBER_TYPES = (int, float)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return type(value) in _NUMBER_TYPES  # and not bool, a subclass of int


def _check(condition: bool, reason: str, record: Any) -> None:
    if not condition:
        raise BadRecord(reason, record)


def _normalise_guest(guest: Any, index: int, pii: PiiPolicy, raw: Any) -> dict[str, Any]:
    # Type checks are written out (``type(v) in _NUMBER_TYPES``, not a helper): this runs two
    # or three times for every event, and calls are what costs most here.
    if type(guest) is not dict:
        raise BadRecord(f"guests[{index}] is not an object", raw)
    out = dict(guest)
    out.pop("__type", None)
    start = out.get("startTime")
    if start is not None:
        try:
            out["startTime"] = returned_for_event(start)[0]
        except ValueError as exc:
            raise BadRecord(f"guests[{index}].startTime is not a date: {exc}", raw) from None
    value = out.get("duration")
    if value is not None and type(value) not in _NUMBER_TYPES:
        raise BadRecord(f"guests[{index}].duration is not a number", raw)
    value = out.get("kbytes")
    if value is not None and type(value) not in _NUMBER_TYPES:
        raise BadRecord(f"guests[{index}].kbytes is not a number", raw)
    location = out.get("location")
    if type(location) is dict:
        if "__type" in location:
            location = out["location"] = dict(location)
            del location["__type"]
    elif location is not None:
        raise BadRecord(f"guests[{index}].location is not an object", raw)
    if pii.mode != "keep":
        pii.apply(out)
    return out


def _check_fields(session: dict[str, Any], raw: Any) -> None:
    get = session.get
    for field in ("type", "status"):
        value = get(field)
        if value is not None and type(value) is not str:
            raise BadRecord(f"{field} is not a string", raw)
    for field in ("width", "height", "kbytes"):
        value = get(field)
        if value is not None and type(value) not in _NUMBER_TYPES:
            raise BadRecord(f"{field} is not a number", raw)
    reverse = get("isReverse")
    if reverse is not None and type(reverse) is not bool:
        raise BadRecord("isReverse is not a boolean", raw)


def normalise_session(
    raw: Any, pii: PiiPolicy, *, ended: bool
) -> tuple[dict[str, Any], int, datetime]:
    """The record as consumers see it, with its id and start."""
    _check(isinstance(raw, dict), "the session record is not an object", raw)
    session = dict(raw)
    session.pop("__type", None)
    session_id = session.get("id")
    if not _is_int(session_id) or not 0 < session_id <= MAX_STORED_INT:
        raise BadRecord("id is missing or not a positive integer", raw)
    try:
        session["startTime"], start = returned_for_event(session.get("startTime"))
    except ValueError as exc:
        raise BadRecord(f"startTime is missing or not a date: {exc}", raw) from None
    _check_fields(session, raw)
    key = session.get("key")
    if key is not None:
        _check(isinstance(key, str | int) and not isinstance(key, bool), "key is not text", raw)
        session["key"] = str(key)
    duration = session.get("duration")
    if ended:
        if not _is_number(duration) or not math.isfinite(duration) or duration < 0:
            raise BadRecord("duration is missing, not a number or negative", raw)
        try:
            end = start + timedelta(seconds=duration)
        except OverflowError:
            raise BadRecord("duration is out of range", raw) from None
        session["endTime"] = to_event(end)  # also the completed event's ce_time
    else:
        _check(duration is None or _is_number(duration), "duration is not a number", raw)
    guests = session.get("guests")
    if isinstance(guests, list):
        session["guests"] = [_normalise_guest(g, i, pii, raw) for i, g in enumerate(guests)]
    elif guests is not None:
        raise BadRecord("guests is not a list", raw)
    return session, session_id, start


class EventBuilder:
    """Builds one partner's events; the topics and the PII policy are fixed per process."""

    def __init__(self, partner_id: int, topics: TopicSettings, pii: PiiPolicy) -> None:
        self.partner_id = partner_id
        self._topics = topics
        self._pii = pii
        self._source_header = ("ce_source", f"/glance/partners/{partner_id}".encode())

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
        if record.user_name is not None and not isinstance(record.user_name, str):
            raise BadRecord("userName is not a string", raw)
        if record.partner_user_id is not None and not isinstance(record.partner_user_id, str):
            raise BadRecord("partnerUserId is not a string", raw)
        session, session_id, start = normalise_session(raw, self._pii, ended=ended)
        body: dict[str, Any] = {
            "partnerId": self.partner_id,
            "userName": record.user_name,
            "partnerUserId": record.partner_user_id,
        }
        if observed_active is not None:
            body["observedActive"] = observed_active
        body["session"] = session
        value = to_json(body)
        subject = str(session_id).encode()
        occurred = (session["endTime"] if ended else session["startTime"]).encode()
        headers = self._headers(
            event_id(self.partner_id, session_id, event_type), event_type, occurred, subject
        )
        topic = self._topics.completed if ended else self._topics.started
        return Event(topic, subject, value, headers, session_id, start)

    def _headers(self, ce_id: str, event_type: str, occurred: bytes, subject: bytes) -> Headers:
        return [
            _SPEC_VERSION,
            ("ce_id", ce_id.encode()),
            self._source_header,
            _TYPE_HEADERS[event_type],
            ("ce_time", occurred),
            ("ce_subject", subject),
            _CONTENT_TYPE,
        ]

    def counts(self, snapshot: CountsSnapshot) -> Event:
        """One snapshot of the day's session counts; keyed by partner, one id per instant."""
        as_of = to_event(snapshot.as_of)
        value = to_json(
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
        headers = self._headers(ce_id, "counts", as_of.encode(), key)
        return Event(self._topics.counts, key, value, headers)

    def dead_letter(self, record: SourceRecord, reason: str, operation: str) -> Event:
        """The raw record as value; why, whose and from where in the headers."""
        raw = record.raw
        letter = to_json(self._pii.scrubbed(raw))
        session_id = raw.get("id") if isinstance(raw, dict) else None
        # Always a key: a compacted dead-letter topic refuses a record without one (an error
        # aiokafka cannot name, retried for ever). Without an id, the letter's own digest:
        # the same bad record always gets the same key.
        key = (
            str(session_id).encode()
            if _is_int(session_id)
            else b"record-" + hashlib.sha256(letter).hexdigest()[:32].encode()
        )
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
        return Event(self._topics.dlq, key, letter, headers)

    def refused(self, event: Event, reason: str, operation: str, limit: int) -> Event:
        """A dead letter for an event Kafka refused (too large, invalid): its headers say
        why, whose and how large; its value is JSON holding the start of the event's value,
        cut so that the letter fits under ``limit`` bytes (``truncated`` says so)."""
        size = len(event.value)
        headers: Headers = [
            ("dlq_reason", reason.encode()),
            ("dlq_partner_id", str(self.partner_id).encode()),
            ("dlq_operation", operation.encode()),
            # A dead letter's own refusal has no session to name.
            *([] if event.session_id is None else [("dlq_session_id", b"%d" % event.session_id)]),
            ("dlq_event_type", dict(event.headers).get("ce_type", b"")),
            ("dlq_size", str(size).encode()),
            ("content-type", b"application/json"),
        ]
        # Escaping can double the text (quotes, backslashes): half the room is always enough.
        room = max(0, limit - 4096) // 2
        truncated = size > room
        value = to_json(
            {
                "partnerId": self.partner_id,
                "sessionId": event.session_id,
                "size": size,
                "truncated": truncated,
                "value": event.value[:room].decode("utf-8", "ignore"),
            }
        )
        if truncated:
            headers.append(("dlq_truncated", b"true"))
        return Event(
            self._topics.dlq, event.key, value, headers, event.session_id, event.start_time
        )
