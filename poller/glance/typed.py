"""Session records in exactly their documented shape, decoded and type-checked in C (msgspec).

Nearly every record upstream sends has the documented fields, with the documented types and
dates already in the event's form (``2026-01-31T06:00:00Z``). Such a record is decoded
straight into these structs, and the event builder turns it into an event without visiting
each field in Python: the backfill spent half its CPU doing that (bench/README.md).

Anything else (an unknown field, a mistyped or missing one, an ASMX or offset date) fails
this strict decode and stays a raw record for the general path, which gives the same event or
a dead letter. The structs decide only which path is faster, never what an event says:
``tests/unit/test_typed_records.py`` checks that both paths agree on every record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType, field

__all__ = [
    "ENCODER",
    "ENVELOPE",
    "SESSION",
    "DecodeError",
    "EventBody",
    "Guest",
    "Location",
    "Raw",
    "Session",
]

# An RFC 3339 date with its zone (read in C); the builder takes only whole-second UTC ones.
Date = Annotated[datetime, Meta(tz=True)]
Number = int | float
# Never accepted from upstream (an ``endTime`` of its own is an unknown field: the general
# path keeps it); the event builder sets it on the copy it publishes.
_NotFromUpstream = Annotated[str, Meta(min_length=1, max_length=0)]


class Location(Struct, forbid_unknown_fields=True, gc=False):
    wire_type: str | UnsetType = field(default=UNSET, name="__type")
    city: str | UnsetType | None = UNSET
    region: str | UnsetType | None = UNSET
    countryCode: str | UnsetType | None = UNSET


class Guest(Struct, forbid_unknown_fields=True, gc=False):
    wire_type: str | UnsetType = field(default=UNSET, name="__type")
    type: str | UnsetType | None = UNSET
    status: str | UnsetType | None = UNSET
    startTime: Date | UnsetType | None = UNSET
    duration: Number | UnsetType | None = UNSET
    kbytes: Number | UnsetType | None = UNSET
    ip: str | UnsetType | None = UNSET
    location: Location | UnsetType | None = UNSET
    name: str | UnsetType | None = UNSET
    email: str | UnsetType | None = UNSET
    phone: str | UnsetType | None = UNSET
    error: str | UnsetType | None = UNSET
    clientVersion: str | UnsetType | None = UNSET
    protocolVersion: int | str | UnsetType | None = UNSET


class Session(Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Fields in the order upstream sends them, so an event's value reads as the record."""

    wire_type: str | UnsetType = field(default=UNSET, name="__type")
    id: Annotated[int, Meta(gt=0)]
    type: str | UnsetType | None = UNSET
    status: str | UnsetType | None = UNSET
    startTime: Date
    key: str | int | UnsetType | None = UNSET
    width: Number | UnsetType | None = UNSET
    height: Number | UnsetType | None = UNSET
    duration: Number | UnsetType | None = UNSET
    kbytes: Number | UnsetType | None = UNSET
    isReverse: bool | UnsetType | None = UNSET
    guests: list[Guest] | UnsetType | None = UNSET
    # Set only on the copy an event publishes: the end as a datetime (sub-second: its string).
    endTime: _NotFromUpstream | UnsetType = UNSET


class EventBody(Struct, kw_only=True, gc=False):
    """An event's value (design.md §3), in the general path's key order."""

    partnerId: int
    userName: Any
    partnerUserId: Any
    observedActive: bool | UnsetType = UNSET
    session: Session


# The envelope of a listing, each record left as its own JSON text. Fields it does not name
# (``__type``, ``validUser`` ...) are not the poller's to check, so they are ignored here.
class _User(Struct):
    userName: Any = None
    partnerUserId: Any = None
    sessions: list[Raw] | None = None


class _Listing(Struct):
    nextId: Annotated[int, Meta(ge=0)] | None = 0
    users: list[_User] | None = None


class _Answer(Struct):
    d: _Listing


ENVELOPE = msgspec.json.Decoder(_Answer)
SESSION = msgspec.json.Decoder(Session)
ENCODER = msgspec.json.Encoder()
DecodeError = msgspec.DecodeError
