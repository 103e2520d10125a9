"""Fixed data sets, written in the API's own response format.

A data set is what ``PartnerCompletedSessions`` (or ``PartnerActiveSessions``) returns: the whole
response ``{"d": {"users": [...]}}``, its ``d`` (``{"users": [...]}``) or just the list of users.
The seed document's sample response loads as it is (``data/seed_sample.json``).

Records are kept exactly as given (field order, nulls, unknown fields, even odd values) and
served back as they are. What the emulator needs to place a record in time is read from it:

* a record whose status is terminal (or unknown: "an unknown letter is not an error") ended at
  ``startTime + duration``;
* a record whose status is J, W, A or L is an open-ended active session, served as given until
  it is ended through the admin API.

A record must have a readable ``startTime``. One without an ``id`` gets the next free id (the
emulator keys everything on ids), written into the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from poller.emulator.dates import DateFormatError, parse_record_date
from poller.emulator.gc_pause import gc_paused
from poller.emulator.sessions import ACTIVE_STATUSES, Guest, Record, Session

SEED_SAMPLE_PATH = Path(__file__).parent / "data" / "seed_sample.json"

DatasetSource = Path | str | bytes | Mapping[str, Any] | list[Any]


class DatasetError(ValueError):
    """A data set the emulator cannot use; the message says where."""


def load_dataset(
    source: DatasetSource, partner_id: int, allocate_id: Callable[[], int]
) -> list[Session]:
    """Sessions of one partner from a data set (a file path, JSON bytes or parsed JSON)."""
    document = _read(source)
    with gc_paused():
        return _sessions_of(document, partner_id, allocate_id)


def _sessions_of(document: Any, partner_id: int, allocate_id: Callable[[], int]) -> list[Session]:
    sessions = []
    for user_index, user in enumerate(_users_of(document)):
        if not isinstance(user, dict):
            raise DatasetError(f"users[{user_index}] is not an object")
        records = user.get("sessions", [])
        if not isinstance(records, list):
            raise DatasetError(f"users[{user_index}].sessions is not a list")
        for record_index, record in enumerate(records):
            where = f"users[{user_index}].sessions[{record_index}]"
            if not isinstance(record, dict):
                raise DatasetError(f"{where} is not an object")
            sessions.append(
                _session_from_record(
                    partner_id,
                    _text(user.get("userName")),
                    _text(user.get("partnerUserId")),
                    record,
                    allocate_id,
                    where,
                )
            )
    return sessions


def _read(source: DatasetSource) -> Any:
    """Parse, or copy, the document (the store keeps records; callers keep their objects)."""
    try:
        if isinstance(source, Path | str):
            return orjson.loads(Path(source).read_bytes())
        if isinstance(source, bytes):
            return orjson.loads(source)
        return orjson.loads(orjson.dumps(source))
    except orjson.JSONDecodeError as exc:
        raise DatasetError(f"not JSON: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read the data set: {exc}") from exc


def _users_of(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        body = document.get("d", document)
        if isinstance(body, dict) and isinstance(body.get("users"), list):
            users: list[Any] = body["users"]
            return users
    raise DatasetError('a data set is {"d": {"users": [...]}}, {"users": [...]} or a list of users')


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _session_from_record(
    partner_id: int,
    user_name: str,
    partner_user_id: str,
    record: Record,
    allocate_id: Callable[[], int],
    where: str,
) -> Session:
    session_id = _session_id(record, allocate_id, where)
    start = _start_time(record, where)
    status = record.get("status")
    open_ended = isinstance(status, str) and status in ACTIVE_STATUSES
    end = None if open_ended else start + _seconds(record.get("duration"))
    guests = _guests(record.get("guests"), start)
    return Session(
        partner_id=partner_id,
        user_name=user_name,
        partner_user_id=partner_user_id,
        id=session_id,
        type=_text(record.get("type")),
        start=start,
        end=end,
        # An active record ends as "C" when told to end without a status.
        final_status="C" if open_ended else _text(status),
        record=record,
        guests=guests,
        live_status=status if open_ended else None,
    )


def _session_id(record: Record, allocate_id: Callable[[], int], where: str) -> int:
    value = record.get("id")
    if value is None:
        session_id = allocate_id()
        items = list(record.items())
        at = 1 if items and items[0][0] == "__type" else 0
        items.insert(at, ("id", session_id))
        record.clear()
        record.update(items)
        return session_id
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise DatasetError(f"{where}.id is not a session id: {value!r}")


def _start_time(record: Record, where: str) -> int:
    value = record.get("startTime")
    if not isinstance(value, str):
        raise DatasetError(f"{where}.startTime is missing")
    try:
        return parse_record_date(value)
    except DateFormatError as exc:
        raise DatasetError(f"{where}.startTime: {exc}") from exc


def _seconds(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _guests(value: Any, session_start: int) -> list[Guest]:
    """Guest objects behind the record's list (none if the list is not made of objects)."""
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        return []
    guests = []
    for record in value:
        joined = _guest_joined(record)
        status = record.get("status")
        if isinstance(status, str) and status in ACTIVE_STATUSES:
            guests.append(Guest(record=record, joined=joined, left=None, live_status=status))
        else:
            # A guest already gone: it left ``duration`` seconds after joining.
            left = (joined if joined is not None else session_start) + _seconds(
                record.get("duration")
            )
            guests.append(
                Guest(
                    record=record,
                    joined=joined,
                    left=left,
                    final_status=status if isinstance(status, str) else None,
                )
            )
    return guests


def _guest_joined(record: Record) -> int | None:
    value = record.get("startTime")
    if not isinstance(value, str):
        return None
    try:
        return parse_record_date(value)
    except DateFormatError:
        return None
