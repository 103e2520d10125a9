"""Dates on the wire: what we send (always explicit UTC) and what we accept back.

Upstream reads a zone-less date as US Eastern time, so every request date carries ``Z``.
Returned dates are UTC, as ISO strings or as classic ASMX ``\\/Date(ms)\\/`` strings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from poller.logs import excerpt

_ASMX_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_EPOCH = datetime.fromtimestamp(0, UTC)
_EVENT_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def to_request(moment: datetime) -> str:
    """Whole-second UTC with ``Z``; naive datetimes are refused rather than guessed."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: request dates must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_returned(value: object) -> datetime:
    """An upstream date as an aware UTC datetime; ValueError when it is not a date."""
    if not isinstance(value, str):
        raise ValueError(f"expected a date string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("/"):
        asmx = _ASMX_DATE.match(text)
        if asmx is not None:
            # The optional offset of the ASMX form is informational: the milliseconds are UTC.
            try:
                return _EPOCH + timedelta(milliseconds=int(asmx.group(1)))
            except OverflowError:
                raise ValueError(f"date out of range: {excerpt(text, 40)!r}") from None
    try:
        # RFC 3339 allows a lower-case "t" and "z", Python's parser does not.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        raise ValueError(f"not an ISO-8601 or /Date(ms)/ date: {excerpt(text, 40)!r}") from None
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:
        # Returned dates are documented as UTC, zone or not.
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def returned_for_event(value: object) -> tuple[str, datetime]:
    """An upstream date in the event's form (``to_event``) and as a datetime; ValueError when
    it is not a date. Whole-second UTC with ``Z``, the usual form, is already the event's."""
    if isinstance(value, str) and len(value) == 20 and _EVENT_FORM.fullmatch(value):
        try:
            return value, datetime.fromisoformat(value)
        except ValueError:
            pass  # the right shape but no such date: parse_returned says why
    moment = parse_returned(value)
    return to_event(moment), moment


def to_event(moment: datetime) -> str:
    """ISO-8601 UTC with ``Z``; milliseconds only when upstream had sub-second precision."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # Sliced rather than formatted: this runs several times for every event.
    if utc.microsecond == 0:
        return utc.isoformat()[:19] + "Z"
    return utc.isoformat(timespec="milliseconds")[:23] + "Z"
