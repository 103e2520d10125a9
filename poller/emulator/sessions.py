"""One Glance session over its life, and the record it shows on the wire at a given instant.

A session is stored once, in its *ended* form: ``Session.record`` is exactly the record the
service serves once the session is over (ISO dates, terminal status, final duration), with the
guests' ended records inside it. Nothing about visibility is stored: whether the session has
started, is active or has ended is decided from the clock at call time, and the active form
(non-terminal status, duration 0, only the guests who have joined, present guests at duration 0)
is derived from the ended one on demand. Keeping the ended record ready-made means a page of
completed sessions is served without building anything.

Records loaded from a data set keep their fields exactly as given (order, nulls, unknown extras);
``Session.record`` is then that very record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from poller.emulator.dates import format_iso, format_ms

Record = dict[str, Any]

SESSION_TYPE_TAG = "ActivityService+session"

# API page, section 4: J, W, A and L are the only non-terminal letters; anything else (including
# letters we do not know) means the session is over.
ACTIVE_STATUSES = frozenset({"J", "W", "A", "L"})
TERMINAL_STATUSES = ("C", "X", "Q", "T", "D", "E", "K", "U")
SESSION_TYPES = ("C", "G", "V")

# A session reads "J" (being set up) for its first seconds, then "W" until a second participant
# is present, then "A".
SETUP_SECONDS = 2


@dataclass(slots=True, eq=False)
class Guest:
    """One participant of a session."""

    record: Record
    """The guest as served once it has gone or the session has ended."""
    joined: int | None
    """When the guest joined; None if unknown (then it counts as joined at the session start)."""
    left: int | None
    """When the guest left; None means it stays until the session ends."""
    final_status: str | None = None
    """Its letter once gone; None means it takes the session's final status."""
    live_status: str = "A"
    """Its letter while present."""

    def joined_at(self, session_start: int) -> int:
        return self.joined if self.joined is not None else session_start

    def is_gone(self, now: float) -> bool:
        return self.left is not None and self.left <= now

    def finish(self, session_start: int, session_end: int, session_status: str) -> None:
        """Settle the ended form of a guest still present when its session ends."""
        if self.left is not None and self.left <= session_end:
            return  # gone before the end: its record is already final
        self.left = None
        if "status" in self.record:
            self.record["status"] = self.final_status or session_status
        if "duration" in self.record:
            self.record["duration"] = max(0, session_end - self.joined_at(session_start))

    def render_present(self, *, ms_dates: bool) -> Record:
        record = dict(self.record)
        if "status" in record:
            record["status"] = self.live_status
        if "duration" in record:
            record["duration"] = 0
        if ms_dates:
            self._use_ms_dates(record)
        return record

    def render_gone(self, *, ms_dates: bool) -> Record:
        if not ms_dates:
            return self.record
        record = dict(self.record)
        self._use_ms_dates(record)
        return record

    def _use_ms_dates(self, record: Record) -> None:
        if self.joined is not None and "startTime" in record:
            record["startTime"] = format_ms(self.joined)


@dataclass(slots=True, eq=False)
class Session:
    """One session of one partner's user."""

    partner_id: int
    user_name: str
    partner_user_id: str
    id: int
    type: str
    start: int
    """Start time, whole seconds since the epoch."""
    end: int | None
    """Planned (or actual) end; None = open-ended, active until ended through the admin API."""
    final_status: str
    """The letter served once ended."""
    record: Record
    """The record as served once ended (see the module docstring)."""
    guests: list[Guest] = field(default_factory=list)
    """The guests behind ``record["guests"]``, in the same order; empty if that list is not
    made of guest objects (then it is served as it is)."""
    live_status: str | None = None
    """A fixed letter while active; None derives it (J, then W, then A) from the guests."""

    def has_started(self, now: float) -> bool:
        return self.start <= now

    def has_ended(self, now: float) -> bool:
        return self.end is not None and self.end <= now

    def status_at(self, now: float) -> str:
        if self.has_ended(now):
            return self.final_status
        if self.live_status is not None:
            return self.live_status
        if now - self.start < SETUP_SECONDS:
            return "J"
        present = sum(
            1
            for guest in self.guests
            if guest.joined_at(self.start) <= now and not guest.is_gone(now)
        )
        return "A" if present >= 2 else "W"

    def finish(self, end: int, status: str) -> None:
        """End the session at ``end`` with ``status``; its ended record follows.

        Only for the store to call (it keeps an index on end times).
        """
        self.end = end
        self.final_status = status
        if "status" in self.record:
            self.record["status"] = status
        if "duration" in self.record:
            self.record["duration"] = max(0, end - self.start)
        if self.guests:
            # Ended early: those who would have joined later never did.
            self.guests = [g for g in self.guests if g.joined_at(self.start) <= end]
            self.record["guests"] = [g.record for g in self.guests]
        for guest in self.guests:
            guest.finish(self.start, end, status)

    def render(self, now: float, *, ms_dates: bool = False) -> Record:
        """The record as a call made at ``now`` serves it.

        The ended record is returned as it is stored when no conversion is needed: callers
        that want to change it must copy it first.
        """
        if self.has_ended(now):
            return self._render_ended(ms_dates=ms_dates)
        return self._render_active(now, ms_dates=ms_dates)

    def _render_ended(self, *, ms_dates: bool) -> Record:
        if not ms_dates:
            return self.record
        record = dict(self.record)
        if "startTime" in record:
            record["startTime"] = format_ms(self.start)
        if self.guests:
            record["guests"] = [guest.render_gone(ms_dates=True) for guest in self.guests]
        return record

    def _render_active(self, now: float, *, ms_dates: bool) -> Record:
        record = dict(self.record)
        if "status" in record:
            record["status"] = self.status_at(now)
        if "duration" in record:
            record["duration"] = 0
        if ms_dates and "startTime" in record:
            record["startTime"] = format_ms(self.start)
        if self.guests:
            record["guests"] = [
                guest.render_gone(ms_dates=ms_dates)
                if guest.is_gone(now)
                else guest.render_present(ms_dates=ms_dates)
                for guest in self.guests
                if guest.joined_at(self.start) <= now
            ]
        return record


@dataclass(slots=True)
class GuestSpec:
    """What is needed to build a guest (the generator and the admin API fill these)."""

    type: str
    joined: int
    left: int | None = None
    final_status: str | None = None
    kbytes: int = 0
    ip: str | None = None
    location: dict[str, str | None] | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Optional and unknown fields, served after the documented ones (error, clientVersion...)."""


@dataclass(slots=True)
class SessionSpec:
    """What is needed to build a session (the generator and the admin API fill these)."""

    partner_id: int
    id: int
    user_name: str
    partner_user_id: str
    type: str
    start: int
    end: int | None
    final_status: str
    key: str
    width: int
    height: int
    kbytes: int
    is_reverse: bool
    guests: list[GuestSpec]
    live_status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_session(spec: SessionSpec) -> Session:
    """Build a session whose records have the field order of the seed sample."""
    guests = [_build_guest(guest_spec, spec) for guest_spec in spec.guests]
    record: Record = {
        "__type": SESSION_TYPE_TAG,
        "id": spec.id,
        "type": spec.type,
        "status": spec.final_status,
        "startTime": format_iso(spec.start),
        "key": spec.key,
        "width": spec.width,
        "height": spec.height,
        "duration": 0 if spec.end is None else max(0, spec.end - spec.start),
        "kbytes": spec.kbytes,
        "isReverse": spec.is_reverse,
        "guests": [guest.record for guest in guests],
    }
    record.update(spec.extra)
    return Session(
        partner_id=spec.partner_id,
        user_name=spec.user_name,
        partner_user_id=spec.partner_user_id,
        id=spec.id,
        type=spec.type,
        start=spec.start,
        end=spec.end,
        final_status=spec.final_status,
        record=record,
        guests=guests,
        live_status=spec.live_status,
    )


def _build_guest(spec: GuestSpec, session: SessionSpec) -> Guest:
    gone_at = session.end
    if spec.left is not None and (gone_at is None or spec.left < gone_at):
        gone_at = spec.left
    record: Record = {
        "type": spec.type,
        "status": spec.final_status or session.final_status,
        "startTime": format_iso(spec.joined),
        "duration": 0 if gone_at is None else max(0, gone_at - spec.joined),
        "kbytes": spec.kbytes,
        "ip": spec.ip,
        "location": spec.location,
        "name": spec.name,
        "email": spec.email,
        "phone": spec.phone,
    }
    record.update(spec.extra)
    return Guest(record=record, joined=spec.joined, left=spec.left, final_status=spec.final_status)
