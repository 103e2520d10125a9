"""The envelope of a session listing: users and their session records, as decoded JSON; and
the total of a counts answer.

Only the envelope is checked here (a wrong envelope is a retriable upstream fault); each
record is judged on its own by the event builder, so that one bad record becomes one dead
letter, not a failed page. The client knows nothing of events.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from poller.cursor import MAX_STORED_INT
from poller.errors import RetriableUpstreamError
from poller.glance.dates import parse_returned
from poller.logs import excerpt


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One session record as upstream sent it (decoded JSON), with the user it was listed
    under."""

    user_name: Any
    partner_user_id: Any
    raw: Any

    def start(self) -> datetime | None:
        """When the session started (UTC), or None when the record has no readable start."""
        raw = self.raw
        try:
            return parse_returned(raw.get("startTime") if isinstance(raw, dict) else None)
        except ValueError:
            return None


@dataclass(frozen=True)
class SessionPage:
    request_token: int
    next_token: int
    records: list[SourceRecord]
    # Upstream's Date on the answer (bounded by the client's clock rule): what the page
    # shows was true at that moment.
    served_at: datetime | None = None


def _bad_shape(detail: str) -> RetriableUpstreamError:
    return RetriableUpstreamError("bad_shape", detail)


def page_token(value: Any) -> int:
    """A ``nextId`` as the state can hold it: an integer from 0 to 2**63-1 (null is 0).
    Anything else is a bad answer, retried like any other."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STORED_INT:
        raise _bad_shape(f"nextId is not an integer from 0 to 2**63-1: {excerpt(str(value), 40)!r}")
    return value


def parse_session_page(d: Any, request_token: int, page_size: int | None = None) -> SessionPage:
    """Turn the ``d`` of PartnerCompletedSessions / PartnerActiveSessions into a page; more
    records than ``page_size`` asked for is a bad answer."""
    if not isinstance(d, dict):
        raise _bad_shape(f"expected an object in 'd', got {type(d).__name__}")
    next_token = page_token(d.get("nextId", 0))
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
        if page_size is not None and len(records) > page_size:
            raise _bad_shape(f"more records than the {page_size} asked for")
    return SessionPage(request_token=request_token, next_token=next_token, records=records)


def answer_d(operation: str, payload: bytes) -> Any:
    """The ``d`` of an ASMX JSON answer; invalid JSON or no ``d`` is a retriable fault."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        document = _with_lone_surrogates(payload)
        if document is _UNREADABLE:
            raise RetriableUpstreamError("invalid_json", f"{operation}: {exc}") from None
    if not isinstance(document, dict) or "d" not in document:
        raise RetriableUpstreamError("bad_shape", f"{operation}: no 'd' in the answer")
    return document["d"]


_UNREADABLE = object()
# Half of a UTF-16 pair, alone: Python's JSON reader keeps it in the string, UTF-8 cannot.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _with_lone_surrogates(payload: bytes) -> Any:
    """What orjson refused, read again by the standard library's reader, which takes the one
    thing JSON's grammar allows and orjson does not: a lone surrogate escape (``"\\ud800"``,
    sent by a .NET string cut inside a character). Each such half reads as U+FFFD, so that one
    name cut short does not fail its page at every tick. Anything else orjson refused (not
    JSON, a number no double holds) stays refused: ``_UNREADABLE``."""
    try:
        document = json.loads(payload, parse_constant=_refused, parse_float=_finite)
    except (ValueError, RecursionError):
        return _UNREADABLE
    return _replace_lone_surrogates(document)


def _refused(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a double")
    return number


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def total_count(rows: Any) -> int:
    """The sum of PartnerSessionCounts rows; a wrong shape is a retriable upstream fault."""
    if not isinstance(rows, list):
        raise RetriableUpstreamError("bad_shape", "session counts are not a list")
    total = 0
    for row in rows:
        count = row.get("count") if isinstance(row, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RetriableUpstreamError(
                "bad_shape", excerpt(f"a counts row has no valid count: {row!r}", 200)
            )
        total += count
    return total
