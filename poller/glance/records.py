"""The envelope of a session listing: users and their session records.

Only the envelope is checked here (a wrong envelope is a retriable upstream fault); each
record is judged on its own by the event builder, so that one bad record becomes one dead
letter, not a failed page. A record in exactly the documented shape is also decoded into a
typed ``Session`` (``poller.glance.typed``), which the builder turns into an event faster;
where the native fast path is built (``native/``, ``poller._fastpath``), such records are read
and checked in Rust instead, faster still.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from poller.errors import RetriableUpstreamError
from poller.glance import typed
from poller.glance.dates import parse_returned
from poller.native import NATIVE

if NATIVE:
    from poller import _fastpath
if TYPE_CHECKING:
    from poller._fastpath import Builder
_UNREAD: Any = object()


class SourceRecord:
    """One session record as upstream sent it, with the user it was listed under.

    ``raw`` is the record as JSON values (decoded from its own text on first use when it came
    typed); ``session`` is the same record as a typed ``Session``, or None when it does not
    have exactly the documented shape; ``native`` is the record as checked by the native fast
    path (then ``session`` is None), or None."""

    __slots__ = ("_raw", "_wire", "native", "partner_user_id", "session", "user_name")

    def __init__(
        self,
        user_name: Any,
        partner_user_id: Any,
        raw: Any = _UNREAD,
        *,
        wire: typed.Raw | bytes | None = None,
        session: typed.Session | None = None,
        native: _fastpath.Session | None = None,
    ) -> None:
        if raw is _UNREAD and wire is None and native is None:
            raise TypeError("a SourceRecord needs its raw record or its JSON text")
        self.user_name = user_name
        self.partner_user_id = partner_user_id
        self.session = session
        self.native = native
        self._raw = raw
        self._wire = wire

    @property
    def raw(self) -> Any:
        if self._raw is _UNREAD:
            wire = self._wire if self.native is None else self.native.wire
            assert wire is not None
            self._raw = orjson.loads(memoryview(wire))
        return self._raw

    def start(self) -> datetime | None:
        """When the session started (UTC), or None when the record has no readable start."""
        if self.native is not None:
            return self.native.start
        if self.session is not None:
            return self.session.startTime.astimezone(UTC)
        raw = self.raw
        try:
            return parse_returned(raw.get("startTime") if isinstance(raw, dict) else None)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return (
            f"SourceRecord({self.user_name!r}, {self.partner_user_id!r}, {self.raw!r}, "
            f"typed={self.session is not None}, native={self.native is not None})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceRecord):
            return NotImplemented
        return (self.user_name, self.partner_user_id, self.raw) == (
            other.user_name,
            other.partner_user_id,
            other.raw,
        )


@dataclass(frozen=True)
class SessionPage:
    request_token: int
    next_token: int
    records: list[SourceRecord]
    # Upstream's Date on the answer: what the page shows was true at that moment.
    served_at: datetime | None = None


def _bad_shape(detail: str) -> RetriableUpstreamError:
    return RetriableUpstreamError("bad_shape", detail)


def parse_session_page(d: Any, request_token: int) -> SessionPage:
    """Turn the ``d`` of PartnerCompletedSessions / PartnerActiveSessions into a page."""
    if not isinstance(d, dict):
        raise _bad_shape(f"expected an object in 'd', got {type(d).__name__}")
    next_token = d.get("nextId", 0)
    if next_token is None:
        next_token = 0
    if isinstance(next_token, bool) or not isinstance(next_token, int) or next_token < 0:
        raise _bad_shape(f"nextId is not a non-negative integer: {str(next_token)[:40]!r}")
    users = d.get("users")
    if users is None:
        users = []
    if not isinstance(users, list):
        raise _bad_shape(f"'users' is not a list but {type(users).__name__}")
    records: list[SourceRecord] = []
    for user in users:
        if not isinstance(user, dict):
            raise _bad_shape(f"a user entry is not an object but {type(user).__name__}")
        sessions = user.get("sessions")
        if sessions is None:
            continue
        if not isinstance(sessions, list):
            raise _bad_shape(f"'sessions' is not a list but {type(sessions).__name__}")
        user_name = user.get("userName")
        partner_user_id = user.get("partnerUserId")
        records.extend(SourceRecord(user_name, partner_user_id, raw) for raw in sessions)
    return SessionPage(request_token=request_token, next_token=next_token, records=records)


def answer_d(operation: str, payload: bytes) -> Any:
    """The ``d`` of an ASMX JSON answer; invalid JSON or no ``d`` is a retriable fault."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RetriableUpstreamError("invalid_json", f"{operation}: {exc}") from None
    if not isinstance(document, dict) or "d" not in document:
        raise RetriableUpstreamError("bad_shape", f"{operation}: no 'd' in the answer")
    return document["d"]


def read_session_page(
    operation: str, payload: bytes, request_token: int, *, native: Builder | None = None
) -> SessionPage:
    """A listing's answer as a page. The envelope is decoded in one pass with each record
    left as its own text; any envelope it cannot read goes through ``parse_session_page``,
    which says what is wrong with it. With ``native`` (an ``EventBuilder``'s), records in
    the documented shape are read, checked and rendered by the native fast path."""
    if native is not None:
        page = _read_natively(operation, payload, request_token, native)
        if page is not None:
            return page
    try:
        listing = typed.ENVELOPE.decode(payload).d
    except typed.DecodeError:
        return parse_session_page(answer_d(operation, payload), request_token)
    records: list[SourceRecord] = []
    for user in listing.users or ():
        if user.sessions is None:
            continue
        user_name = user.userName
        partner_user_id = user.partnerUserId
        records.extend(
            _typed_or_not(operation, user_name, partner_user_id, wire) for wire in user.sessions
        )
    return SessionPage(request_token, listing.nextId or 0, records)


def _read_natively(
    operation: str, payload: bytes, request_token: int, builder: Builder
) -> SessionPage | None:
    listing = _fastpath.read_listing(payload, builder)
    if listing is None:
        return None
    next_token, users = listing
    records: list[SourceRecord] = []
    for user_name, partner_user_id, sessions in users:
        for item in sessions:
            if isinstance(item, bytes):
                records.append(_typed_or_not(operation, user_name, partner_user_id, item))
            else:
                records.append(SourceRecord(user_name, partner_user_id, native=item))
    return SessionPage(request_token, next_token, records)


def _typed_or_not(
    operation: str, user_name: Any, partner_user_id: Any, wire: typed.Raw | bytes
) -> SourceRecord:
    try:
        session = typed.SESSION.decode(wire)
    except typed.DecodeError:
        return _untyped(operation, user_name, partner_user_id, wire)
    return SourceRecord(user_name, partner_user_id, wire=wire, session=session)


def _untyped(
    operation: str, user_name: Any, partner_user_id: Any, wire: typed.Raw | bytes
) -> SourceRecord:
    try:
        raw = orjson.loads(memoryview(wire))
    except orjson.JSONDecodeError as exc:
        raise RetriableUpstreamError("invalid_json", f"{operation}: {exc}") from None
    return SourceRecord(user_name, partner_user_id, raw)
