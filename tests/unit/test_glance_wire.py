"""Dates, windows, page tokens and the listing envelope."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from poller.errors import RetriableUpstreamError
from poller.glance.dates import parse_returned, to_event, to_request
from poller.glance.paging import Paginator, RepeatedPageToken
from poller.glance.records import SessionPage, answer_d, parse_session_page
from poller.window import Window, split_window


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


def read_answer(d: object, request_token: int) -> SessionPage:
    """The client's reader: the whole answer's bytes."""
    # The standard library writes integers of any size, as a hostile upstream may.
    body = json.dumps({"d": d}).encode()
    return parse_session_page(answer_d("PartnerCompletedSessions", body), request_token)


READERS = pytest.mark.parametrize("read", [parse_session_page, read_answer], ids=["d", "answer"])


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
        {"nextId": 2**64, "users": []},
        {"nextId": 2**63, "users": []},
        {"nextId": 2**70, "users": []},
        {"nextId": 1.5, "users": []},
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
    [
        (b'{"d": {"nextId": 0, "users": [', "invalid_json"),
        (b'{"x": 1}', "bad_shape"),
        # Not JSON (JavaScript's constants), nor a number a double holds: refused as before.
        (b'{"d": {"nextId": 0, "users": [], "x": NaN}}', "invalid_json"),
        (b'{"d": {"nextId": 0, "users": [], "x": 1e400}}', "invalid_json"),
        (b'{"d": {"nextId": 0, "users": [], "x": "\\ud800"', "invalid_json"),
    ],
)
def test_an_unreadable_answer_is_retriable(payload: bytes, reason: str) -> None:
    with pytest.raises(RetriableUpstreamError) as caught:
        answer_d("PartnerCompletedSessions", payload)
    assert caught.value.reason == reason


def test_the_largest_token_the_state_holds_is_accepted() -> None:
    page = parse_session_page({"nextId": 2**63 - 1, "users": []}, 0)
    assert page.next_token == 2**63 - 1


def test_more_records_than_asked_for_is_a_bad_answer() -> None:
    users = [{"userName": "u", "sessions": [{"id": i} for i in range(1, 4)]}]
    assert len(parse_session_page({"users": users}, 0, page_size=3).records) == 3
    with pytest.raises(RetriableUpstreamError, match="more records than the 2 asked for"):
        parse_session_page({"users": users}, 0, page_size=2)


def test_a_lone_surrogate_escape_is_read_as_the_replacement_character() -> None:
    """JSON's grammar allows ``"\\ud800"`` alone (a .NET string cut inside a character sends
    it); orjson refuses it, and one such record used to fail its whole page at every tick.
    It is read as U+FFFD, which UTF-8 (and so the event) can hold; a pair stays a character."""
    payload = (
        b'{"d": {"nextId": 0, "users": [{"userName": "agent\\udc00", "sessions": ['
        b'{"id": 1, "key": "cut \\ud83d", "guests": [{"\\ud800name": "x"}]},'
        b'{"id": 2, "key": "whole \\ud83d\\ude00"}]}]}}'
    )
    page = parse_session_page(answer_d("PartnerCompletedSessions", payload), 0)
    first, second = page.records
    assert first.user_name == "agent\ufffd"
    assert first.raw == {"id": 1, "key": "cut \ufffd", "guests": [{"\ufffdname": "x"}]}
    assert second.raw == {"id": 2, "key": "whole \U0001f600"}
