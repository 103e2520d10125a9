from datetime import UTC, datetime

import orjson
import pytest

from poller.emulator.dates import (
    DateFormatError,
    escape_ms_dates,
    format_instant,
    format_iso,
    format_ms,
    http_date,
    parse_request_date,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2012-12-01T16:08:00Z", utc(2012, 12, 1, 16, 8)),
        ("2012-12-01T16:08:00z", utc(2012, 12, 1, 16, 8)),
        # Glance's own example of an offset: one-digit hours.
        ("2012-12-01T16:08:00-5:00", utc(2012, 12, 1, 21, 8)),
        ("2012-12-01T16:08:00-05:00", utc(2012, 12, 1, 21, 8)),
        ("2012-12-01T16:08:00+0530", utc(2012, 12, 1, 10, 38)),
        ("2012-12-01T16:08:00+02", utc(2012, 12, 1, 14, 8)),
        # No zone: US Eastern, EST in December (UTC-5)...
        ("2012-12-01T16:00:00", utc(2012, 12, 1, 21, 0)),
        # ...and EDT in July (UTC-4).
        ("2012-07-01T16:00:00", utc(2012, 7, 1, 20, 0)),
        # The day DST began in 2024 (2 a.m. EST became 3 a.m. EDT).
        ("2024-03-10T01:30:00", utc(2024, 3, 10, 6, 30)),
        ("2024-03-10T04:00:00", utc(2024, 3, 10, 8, 0)),
        # A bare date: midnight Eastern.
        ("2012-12-01", utc(2012, 12, 1, 5, 0)),
        ("2012-07-01", utc(2012, 7, 1, 4, 0)),
        ("2020-02-12T11:41:12.250Z", utc(2020, 2, 12, 11, 41, 12, 250_000)),
        ("2020-02-12 11:41Z", utc(2020, 2, 12, 11, 41)),
        # The ASMX form, escaped or not.
        ("/Date(1581507672000)/", utc(2020, 2, 12, 11, 41, 12)),
        ("\\/Date(1581507672000)\\/", utc(2020, 2, 12, 11, 41, 12)),
        ("/Date(1581507672000+0500)/", utc(2020, 2, 12, 11, 41, 12)),
    ],
)
def test_parses_request_dates(text: str, expected: datetime) -> None:
    parsed = parse_request_date(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2020-13-01",
        "2020-02-30T00:00:00Z",
        "2020-02-12T25:00:00Z",
        "12/02/2020",
        "2020-02-12T10:00:00+25:00",
    ],
)
def test_refuses_what_is_not_a_date(text: str) -> None:
    with pytest.raises(DateFormatError):
        parse_request_date(text)


def test_formats_record_dates() -> None:
    assert format_iso(1581507672) == "2020-02-12T11:41:12Z"
    assert format_ms(1581507672) == "/Date(1581507672000)/"


def test_ms_dates_are_escaped_the_asmx_way_and_still_decode() -> None:
    body = orjson.dumps({"d": {"startTime": format_ms(1581507672), "url": "a/b"}})
    escaped = escape_ms_dates(body)
    assert b'"\\/Date(1581507672000)\\/"' in escaped
    assert b'"a/b"' in escaped  # other slashes are left alone
    assert orjson.loads(escaped) == orjson.loads(body)
    assert escape_ms_dates(b'{"d": 1}') == b'{"d": 1}'


def test_http_and_admin_formats() -> None:
    assert http_date(1581507672.9) == "Wed, 12 Feb 2020 11:41:12 GMT"
    assert format_instant(1581507672) == "2020-02-12T11:41:12Z"
    assert format_instant(1581507672.5) == "2020-02-12T11:41:12.500000Z"
