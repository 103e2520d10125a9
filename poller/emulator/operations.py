"""The four web methods of the Activity Service (API page, section 3), answered from the store.

Nothing here knows about HTTP: a call is an operation name, the parameters object and "now";
the answer is a ``SessionPage`` (the listing operations; the endpoint renders its records) or
the list of count rows, or a ``ServiceFault`` carrying what ASP.NET would put in its error body.

Parameters are bound the way ASMX binds them before the method runs: every parameter of the
method must be present (a missing one is a fault naming it), numbers may arrive as numeric
strings, dates are parsed per section 2. Only then does the method check the partner's key and
the range rules.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from poller.emulator.dates import DateFormatError, parse_request_date, to_timestamp
from poller.emulator.sessions import Session
from poller.emulator.store import SessionStore

COMPLETED = "PartnerCompletedSessions"
ACTIVE = "PartnerActiveSessions"
COUNTS = "PartnerSessionCounts"
COUNTS_ENDING = "PartnerSessionCountsEnding"
LISTING_OPERATIONS = frozenset({COMPLETED, ACTIVE})
OPERATIONS = frozenset({COMPLETED, ACTIVE, COUNTS, COUNTS_ENDING})

GROUP_TAG = "ActivityService+groupSessions"
USER_TAG = "ActivityService+userSessions"
COUNT_TAG = "ActivityService+sessionCount"

MAX_RANGE_SECONDS = 31 * 86_400
MAX_RESULTS = 1000

AUTH_MESSAGE = "Invalid partnerId or apiKey"
AUTH_EXCEPTION = "System.Security.Authentication.AuthenticationException"
ARGUMENT_EXCEPTION = "System.ArgumentException"
FORMAT_EXCEPTION = "System.FormatException"
INVALID_OPERATION_EXCEPTION = "System.InvalidOperationException"


class ServiceFault(Exception):
    """An ASP.NET fault: HTTP 500, ``{"Message", "StackTrace", "ExceptionType"}``."""

    def __init__(self, message: str, exception_type: str, outcome: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.outcome = outcome
        """How the call statistics count it: "auth", "error" or "unknown_method"."""


def unknown_method(operation: str) -> ServiceFault:
    return ServiceFault(f"Unknown web method {operation}.", ARGUMENT_EXCEPTION, "unknown_method")


@dataclass(slots=True)
class SessionPage:
    """One page of a listing operation, before its records are rendered."""

    sessions: list[Session]
    next_id: int
    limit: int = MAX_RESULTS
    """The page size asked for (``nResults``, clamped)."""


Result = SessionPage | list[dict[str, Any]]


class ActivityService:
    """The web methods, answering from a store for a set of partners."""

    def __init__(self, store: SessionStore, partners: Mapping[int, str]) -> None:
        self._store = store
        self._partners = partners

    def call(
        self, operation: str, params: Mapping[str, Any], now: float, *, extra_records: int = 0
    ) -> Result:
        """Answer one call; ``extra_records`` makes a listing serve that many records more
        than ``nResults`` asks for (a fault: the page is oversized)."""
        if operation in LISTING_OPERATIONS:
            return self._list(operation, _Params(params), now, extra_records)
        if operation in (COUNTS, COUNTS_ENDING):
            return self._count(operation, _Params(params), now)
        raise unknown_method(operation)

    def _list(self, operation: str, params: _Params, now: float, extra: int = 0) -> SessionPage:
        partner_id = params.integer("partnerId")
        api_key = params.string("apiKey")
        start_from, start_before = params.date("startRange"), params.date("endRange")
        session_key = params.string("sessionKey")
        limit = min(max(params.integer("nResults"), 1), MAX_RESULTS)
        next_id = max(params.integer("nextId"), 0)
        session_type = params.string("type", required=False)
        self._authenticate(partner_id, api_key)
        _check_range(start_from, start_before)

        want_ended = operation == COMPLETED

        def accept(session: Session) -> bool:
            return (
                session.has_ended(now) == want_ended
                and (not session_type or session.type == session_type)
                and (not session_key or _key_of(session) == session_key)
            )

        sessions = self._store.partner(partner_id)
        found, next_id = sessions.page(
            start_from, _started_by(start_before, now), next_id, limit + extra, accept
        )
        return SessionPage(found, next_id, limit)

    def _count(self, operation: str, params: _Params, now: float) -> list[dict[str, Any]]:
        partner_id = params.integer("partnerId")
        api_key = params.string("apiKey")
        session_type = params.string("type")
        status = params.string("status")
        range_from, range_before = params.date("startRange"), params.date("endRange")
        self._authenticate(partner_id, api_key)
        if status not in ("A", "C"):
            raise ServiceFault(
                "status must be 'A' (active) or 'C' (completed).", ARGUMENT_EXCEPTION
            )
        _check_range(range_from, range_before)
        sessions = self._store.partner(partner_id)
        if operation == COUNTS:
            selected: Iterable[Session] = sessions.started_in(
                range_from, _started_by(range_before, now)
            )
        else:
            selected = sessions.ending_in(range_from, min(range_before, math.floor(now) + 1))
        return count_rows(selected, status, session_type, now)

    def _authenticate(self, partner_id: int, api_key: str) -> None:
        expected = self._partners.get(partner_id)
        if expected is None or not hmac.compare_digest(expected.encode(), api_key.encode()):
            raise ServiceFault(AUTH_MESSAGE, AUTH_EXCEPTION, "auth")


def count_rows(
    sessions: Iterable[Session], status: str, session_type: str, now: float
) -> list[dict[str, Any]]:
    """One row per (type, status letter) with at least one session.

    ``status`` "C" counts ended sessions by their terminal letters, "A" active ones by their
    current letters. Durations are those the records show: final for ended sessions, 0 while
    active.
    """
    want_ended = status == "C"
    tally: dict[tuple[str, str], list[int]] = {}
    # Inlined (no method calls per session): a backfill's counts walk a whole month of
    # sessions, and the emulator shares the machine with what it serves.
    for session in sessions:
        start, end = session.start, session.end
        ended = end is not None and end <= now
        if start > now or ended != want_ended:
            continue
        if session_type and session.type != session_type:
            continue
        letter = session.final_status if ended else session.status_at(now)
        count_and_total = tally.get((session.type, letter))
        if count_and_total is None:
            count_and_total = tally[(session.type, letter)] = [0, 0]
        count_and_total[0] += 1
        if want_ended and end is not None:
            count_and_total[1] += end - start
    return [
        {
            "__type": COUNT_TAG,
            "type": kind,
            "status": letter,
            "count": count,
            "averageDuration": round(total / count),
        }
        for (kind, letter), (count, total) in sorted(tally.items())
    ]


def group_by_user(
    page: SessionPage, render: Callable[[Session, int], dict[str, Any]]
) -> dict[str, Any]:
    """The ``d`` of a listing: the page's records grouped by user in order of first appearance.

    ``render(session, position_on_page)`` makes each record.
    """
    users: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for position, session in enumerate(page.sessions):
        user = (session.user_name, session.partner_user_id)
        users.setdefault(user, []).append(render(session, position))
    return {
        "__type": GROUP_TAG,
        "nextId": page.next_id,
        "users": [
            {
                "__type": USER_TAG,
                "userName": user_name,
                "partnerUserId": partner_user_id,
                "validUser": True,
                "invalidReason": None,
                "sessions": records,
            }
            for (user_name, partner_user_id), records in users.items()
        ],
    }


def _key_of(session: Session) -> str:
    key = session.record.get("key")
    return key if isinstance(key, str) else str(key)


def _started_by(start_before: float, now: float) -> float:
    """Narrow a start range to sessions that exist: they have started by ``now``."""
    return min(start_before, math.floor(now) + 1)


def _check_range(start_from: float, start_before: float) -> None:
    if start_before < start_from:
        raise ServiceFault("startRange must not be later than endRange.", ARGUMENT_EXCEPTION)
    if start_before - start_from > MAX_RANGE_SECONDS:
        raise ServiceFault("The date range may not exceed 31 days.", ARGUMENT_EXCEPTION)


# .NET names of JSON value types, for binding errors.
_NET_TYPES: dict[type, str] = {
    bool: "System.Boolean",
    int: "System.Int32",
    float: "System.Decimal",
    str: "System.String",
    list: "System.Object[]",
    dict: "System.Collections.Generic.Dictionary`2[System.String,System.Object]",
}


class _Params:
    """ASMX-style binding of the JSON parameters object to typed method parameters."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = params

    def _value(self, name: str) -> Any:
        if name not in self._params:
            raise ServiceFault(
                f"Invalid web service call, missing value for parameter: '{name}'.",
                INVALID_OPERATION_EXCEPTION,
            )
        return self._params[name]

    def integer(self, name: str) -> int:
        value = self._value(name)
        if value is None:
            raise ServiceFault("Cannot convert null to a value type.", INVALID_OPERATION_EXCEPTION)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ServiceFault(
                    f"{value} is not a valid value for Int32.", FORMAT_EXCEPTION
                ) from None
        raise _cannot_convert(value, "System.Int32")

    def string(self, name: str, *, required: bool = True) -> str:
        if not required and name not in self._params:
            return ""
        value = self._value(name)
        if value is None:  # a null string is legal in .NET; it means "nothing"
            return ""
        if isinstance(value, str):
            return value
        raise _cannot_convert(value, "System.String")

    def date(self, name: str) -> float:
        value = self._value(name)
        if value is None:
            raise ServiceFault("Cannot convert null to a value type.", INVALID_OPERATION_EXCEPTION)
        if not isinstance(value, str):
            raise _cannot_convert(value, "System.DateTime")
        try:
            return to_timestamp(parse_request_date(value))
        except DateFormatError:
            raise ServiceFault(
                "String was not recognized as a valid DateTime.", FORMAT_EXCEPTION
            ) from None


def _cannot_convert(value: Any, target: str) -> ServiceFault:
    source = _NET_TYPES.get(type(value), "System.Object")
    return ServiceFault(
        f"Cannot convert object of type '{source}' to type '{target}'",
        INVALID_OPERATION_EXCEPTION,
    )
