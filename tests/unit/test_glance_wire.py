"""Dates, windows, page tokens and the listing envelope."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from poller.errors import RetriableUpstreamError
from poller.events import EventBuilder, PiiPolicy
from poller.glance.dates import parse_returned, to_event, to_request
from poller.glance.paging import Paginator, RepeatedPageToken, Window, split_window
from poller.glance.records import SessionPage, parse_session_page, read_session_page
from poller.settings import TopicSettings


def test_request_dates_are_explicit_utc_whole_seconds() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert (
        to_request(datetime(2023, 2, 23, 17, 0, 0, 999000, tzinfo=eastern))
        == "2023-02-23T22:00:00Z"
    )
    with pytest.raises(ValueError, match="naive"):
        to_request(datetime(2023, 2, 23, 17, 0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-02-12T11:41:12Z", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("2020-02-12T11:41:12", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("2020-02-12T06:41:12-05:00", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("2020-02-12T11:41:12.250Z", datetime(2020, 2, 12, 11, 41, 12, 250000, tzinfo=UTC)),
        # RFC 3339 allows lower case; the typed records' decoder reads it too.
        ("2020-02-12t11:41:12z", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("/Date(1581507672000)/", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("/Date(1581507672000+0000)/", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
        ("/Date(1581507672000-0500)/", datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)),
    ],
)
def test_returned_dates_in_every_form(text: str, expected: datetime) -> None:
    assert parse_returned(text) == expected


@pytest.mark.parametrize(
    "value", [None, 1581507672, "yesterday", "", "/Date(abc)/", ["2020-01-01"]]
)
def test_returned_dates_refuse_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        parse_returned(value)


def test_event_dates() -> None:
    assert to_event(datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)) == "2020-02-12T11:41:12Z"
    assert (
        to_event(datetime(2020, 2, 12, 11, 41, 12, 250000, tzinfo=UTC))
        == "2020-02-12T11:41:12.250Z"
    )


def test_windows_are_split_at_31_days_without_gaps() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    whole = Window(start, start + timedelta(days=70))
    pieces = split_window(whole, timedelta(days=31))
    assert [p.span for p in pieces] == [timedelta(days=31), timedelta(days=31), timedelta(days=8)]
    assert pieces[0].start == whole.start and pieces[-1].end == whole.end
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    assert split_window(Window(start, start), timedelta(days=31)) == []


def test_paginator_follows_tokens_and_refuses_a_repeat() -> None:
    pages = Paginator()
    assert pages.token == 0 and not pages.finished
    pages.advance(100)
    pages.advance(250)
    assert pages.token == 250
    with pytest.raises(RepeatedPageToken):
        pages.advance(100)
    assert pages.finished


def test_paginator_resumed_mid_scan_refuses_its_start_token() -> None:
    pages = Paginator(start_token=500)
    with pytest.raises(RepeatedPageToken):
        pages.advance(500)


def test_paginator_ends_on_zero() -> None:
    pages = Paginator()
    pages.advance(0)
    assert pages.finished


def read_typed(d: object, request_token: int) -> SessionPage:
    """The client's reader: the envelope (and the records it can) decoded by msgspec."""
    return read_session_page("PartnerCompletedSessions", orjson.dumps({"d": d}), request_token)


def read_native(d: object, request_token: int) -> SessionPage:
    """The client's reader with the native fast path (Rust), msgspec for what it declines."""
    builder = EventBuilder(1, TopicSettings(), PiiPolicy("keep"))
    assert builder.native is not None, "the native fast path is not built"
    return read_session_page(
        "PartnerCompletedSessions", orjson.dumps({"d": d}), request_token, native=builder.native
    )


READERS = pytest.mark.parametrize(
    "read", [parse_session_page, read_typed, read_native], ids=["json", "typed", "native"]
)


@READERS
def test_page_envelope_flattens_users(seed_sample: dict, read: Any) -> None:
    page = read(seed_sample["d"], 0)
    assert page.next_token == 123456789
    assert [(r.user_name, r.partner_user_id, r.raw["id"]) for r in page.records] == [
        ("agent.company.glance.net", "puidValue", 56960588),
        ("agent2.company.glance.net", "anotherPUID", 57125147),
    ]


@READERS
@pytest.mark.parametrize(
    "d",
    [
        "oops",
        None,
        [],
        {"users": 5},
        {"nextId": "12", "users": []},
        {"nextId": -1, "users": []},
        {"nextId": True, "users": []},
        {"users": ["x"]},
        {"users": [{"sessions": {"id": 1}}]},
    ],
)
def test_wrong_envelopes_are_retriable_bad_shape(d: object, read: Any) -> None:
    with pytest.raises(RetriableUpstreamError) as caught:
        read(d, 0)
    assert caught.value.reason == "bad_shape"


@READERS
def test_empty_listing(read: Any) -> None:
    page = read({"nextId": None, "users": None}, 0)
    assert page.records == [] and page.next_token == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b'{"d": {"nextId": 0, "users": [', "invalid_json"), (b'{"x": 1}', "bad_shape")],
)
def test_an_unreadable_answer_is_retriable(payload: bytes, reason: str) -> None:
    with pytest.raises(RetriableUpstreamError) as caught:
        read_session_page("PartnerCompletedSessions", payload, 0)
    assert caught.value.reason == reason
