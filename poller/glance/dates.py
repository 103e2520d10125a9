"""Dates on the wire: what we send (always explicit UTC) and what we accept back.

Upstream reads a zone-less date as US Eastern time, so every request date carries ``Z``.
Returned dates are UTC, as ISO strings or as classic ASMX ``\\/Date(ms)\\/`` strings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_ASMX_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


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
    asmx = _ASMX_DATE.match(text)
    if asmx is not None:
        # The optional offset of the ASMX form is informational: the milliseconds are UTC.
        try:
            return datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=int(asmx.group(1)))
        except OverflowError:
            raise ValueError(f"date out of range: {text[:40]!r}") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 or /Date(ms)/ date: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        # Returned dates are documented as UTC, zone or not.
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_event(moment: datetime) -> str:
    """ISO-8601 UTC with ``Z``; milliseconds only when upstream had sub-second precision."""
    utc = moment.astimezone(UTC)
    spec = "seconds" if utc.microsecond == 0 else "milliseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
