"""Dates as the Activity Service reads and writes them (API page, section 2).

Inputs are ISO 8601: ``Z`` is UTC, an explicit offset is honoured (including Glance's own
one-digit ``-5:00`` form), no zone at all means US Eastern time, and a bare date means midnight
Eastern. ASMX also accepts its own ``\\/Date(ms)\\/`` form, so we do too.

Outputs are UTC, either ISO with ``Z`` (the default, as in the seed sample) or the classic ASMX
``\\/Date(ms)\\/``. Inside the emulator every instant is a number of seconds since the Unix
epoch: records carry whole seconds, the clock may carry fractions.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")

_ISO_INPUT = re.compile(
    r"""^\s*
    (?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})
    (?:
        [Tt\ ]
        (?P<hour>\d{1,2}):(?P<minute>\d{2})
        (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?
        \s*(?P<zone>[Zz]|[+-]\d{1,2}(?::?\d{2})?)?
    )?
    \s*$""",
    re.VERBOSE,
)

# "/Date(1581507672000)/", optionally with the JSON escape "\/" and .NET's informational
# "+0500" suffix (the milliseconds are UTC whatever the suffix says).
_MS_INPUT = re.compile(r"^\s*\\?/Date\((?P<ms>-?\d+)(?:[+-]\d{4})?\)\\?/\s*$")


class DateFormatError(ValueError):
    """A date string the service would refuse ("String was not recognized as a valid DateTime")."""


def parse_request_date(text: str) -> datetime:
    """Read a date the way the Activity Service reads its ``startRange``/``endRange``.

    Returns an aware datetime in UTC.
    """
    ms_match = _MS_INPUT.match(text)
    if ms_match:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms_match["ms"]))
    match = _ISO_INPUT.match(text)
    if match is None:
        raise DateFormatError(f"not an ISO 8601 date: {text!r}")
    try:
        naive = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            _microseconds(match["fraction"]),
        )
    except ValueError as exc:  # month 13, February 30th, hour 25...
        raise DateFormatError(f"not a valid date: {text!r}") from exc
    zone = match["zone"]
    if zone is None:
        # Unspecified zone = US East Coast time, EST or EDT as the date dictates.
        return naive.replace(tzinfo=EASTERN).astimezone(UTC)
    if zone in ("Z", "z"):
        return naive.replace(tzinfo=UTC)
    return naive.replace(tzinfo=_offset(zone, text)).astimezone(UTC)


def _microseconds(fraction: str | None) -> int:
    if not fraction:
        return 0
    return int(fraction[:6].ljust(6, "0"))


def _offset(zone: str, text: str) -> timezone:
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:]
    if ":" in digits:
        hours_text, minutes_text = digits.split(":")
    elif len(digits) > 2:  # "+0530"
        hours_text, minutes_text = digits[:-2], digits[-2:]
    else:  # "+5", "-05"
        hours_text, minutes_text = digits, "0"
    hours, minutes = int(hours_text), int(minutes_text)
    if hours > 14 or minutes > 59:
        raise DateFormatError(f"not a valid UTC offset: {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_record_date(text: str) -> int:
    """Read a date found in a session record (ISO or ``/Date(ms)/``) as whole epoch seconds."""
    return int(parse_request_date(text).timestamp())


def to_timestamp(moment: datetime) -> float:
    """Seconds since the epoch of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime is ambiguous here; give it a time zone")
    return moment.timestamp()


def from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def format_iso(seconds: int) -> str:
    """The record form of a date: ``2020-02-12T11:41:12Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def format_ms(seconds: int) -> str:
    """The ASMX form of a date, as a string value: ``/Date(1581507672000)/``.

    The JSON text must show it as ``\\/Date(...)\\/``; ``escape_ms_dates`` does that on the
    serialised body, since orjson (rightly) never escapes ``/``.
    """
    return f"/Date({seconds * 1000})/"


def escape_ms_dates(body: bytes) -> bytes:
    """Write ``"/Date(ms)/"`` strings the way classic ASMX does: ``"\\/Date(ms)\\/"``.

    ``\\/`` is a legal JSON escape for ``/``, so this never changes what the text decodes to,
    even if a stray ``"/Date(`` happens to be part of some other string.
    """
    if b"/Date(" not in body:
        return body
    return body.replace(b'"/Date(', b'"\\/Date(').replace(b')/"', b')\\/"')


def format_instant(seconds: float) -> str:
    """An admin-facing instant: ISO 8601 UTC with ``Z``, fractions only when there are some."""
    return from_timestamp(seconds).isoformat().replace("+00:00", "Z")


def http_date(seconds: float) -> str:
    """An RFC 7231 IMF-fixdate, for the ``Date`` and ``Retry-After`` headers."""
    return formatdate(int(seconds), usegmt=True)
