"""The envelope of a session listing: users and their raw session records.

Only the envelope is checked here (a wrong envelope is a retriable upstream fault); each
record stays raw so that one bad record becomes one dead letter, not a failed page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from poller.errors import RetriableUpstreamError


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One session record as upstream sent it, with the user it was listed under."""

    user_name: Any
    partner_user_id: Any
    raw: Any


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
