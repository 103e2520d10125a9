"""The typed path (records decoded by msgspec) and the general path (JSON values) agree.

A listing's records in exactly the documented shape are decoded into typed structs and built
into events without the general path's field-by-field checks; everything else takes the
general path. Whichever path a record takes, its event (or its dead-letter reason) must be
the same: these tests build every record both ways and compare.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.errors import BadRecord
from poller.events import Event, EventBuilder, PiiPolicy
from poller.glance.records import SourceRecord, parse_session_page, read_session_page
from poller.settings import TopicSettings

POLICIES = (PiiPolicy("keep"), PiiPolicy("hash", "salt"), PiiPolicy("drop"))


def listing(records: list[Any], user_name: Any = "agent", partner_user_id: Any = "puid") -> bytes:
    return orjson.dumps(
        {
            "d": {
                "__type": "ActivityService+groupSessions",
                "nextId": 0,
                "users": [
                    {
                        "__type": "ActivityService+userSessions",
                        "userName": user_name,
                        "partnerUserId": partner_user_id,
                        "validUser": True,
                        "invalidReason": None,
                        "sessions": records,
                    }
                ],
            }
        }
    )


def both_ways(payload: bytes) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The page as the client reads it (typed where it can) and as JSON values only."""
    typed = read_session_page("PartnerCompletedSessions", payload, 0).records
    general = parse_session_page(orjson.loads(payload)["d"], 0).records
    assert len(typed) == len(general)
    return typed, general


def outcome(builder: EventBuilder, kind: str, record: SourceRecord) -> tuple[Any, ...]:
    try:
        if kind == "completed":
            event: Event = builder.completed(record)
        else:
            event = builder.started(record, observed_active=kind == "started, seen open")
    except BadRecord as exc:
        return ("dead letter", exc.reason)
    return (
        event.topic,
        event.key,
        orjson.loads(event.value),
        event.headers,
        event.session_id,
        event.start_time,
    )


def assert_same_events(typed: SourceRecord, general: SourceRecord) -> None:
    for pii in POLICIES:
        builder = EventBuilder(12345, TopicSettings(), pii)
        for kind in ("completed", "started, seen open", "started, seen ended"):
            assert outcome(builder, kind, typed) == outcome(builder, kind, general), (
                pii.mode,
                kind,
            )
    # Building never changes the record: its started and completed events come from it too.
    assert typed.raw == general.raw
    assert typed.start() == general.start()


def documented_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "__type": "ActivityService+session",
        "id": 56960588,
        "type": "V",
        "status": "C",
        "startTime": "2020-02-12T11:41:12Z",
        "key": "9900V51849",
        "width": 176,
        "height": 144,
        "duration": 13,
        "kbytes": 0,
        "isReverse": False,
        "guests": [
            {
                "type": "visitor",
                "status": "C",
                "startTime": "2020-02-13T18:34:15Z",
                "duration": 9,
                "kbytes": 30,
                "ip": "208.253.26.138",
                "location": {"city": "Seekonk", "region": "MA", "countryCode": "US"},
                "name": "Test guy",
                "email": "jsmith@email.net",
                "phone": "314-555-1212",
            }
        ],
    }
    record.update(changes)
    return record


def test_the_seed_sample_takes_the_typed_path_with_byte_identical_events(
    seed_sample: dict[str, Any],
) -> None:
    payload = orjson.dumps(seed_sample)
    typed, general = both_ways(payload)
    assert typed and all(record.session is not None for record in typed)
    for fast, slow in zip(typed, general, strict=True):
        assert_same_events(fast, slow)
        builder = EventBuilder(12345, TopicSettings(), PiiPolicy("keep"))
        assert builder.completed(fast).value == builder.completed(slow).value


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sessionName": "x"}, "an unknown field"),
        ({"endTime": "2020-02-12T11:41:25Z"}, "upstream's own endTime"),
        ({"startTime": "/Date(1581507672000)/"}, "an ASMX date"),
        ({"startTime": "2020-02-12T11:41:12"}, "no zone"),
        ({"key": True}, "a mistyped key"),
        ({"id": "56960588"}, "a mistyped id"),
        ({"duration": "13"}, "a mistyped duration"),
        ({"guests": [{"type": "agent", "clientVersion": 7}]}, "a mistyped guest field"),
    ],
)
def test_a_record_off_the_documented_shape_takes_the_general_path(
    change: dict[str, Any], why: str
) -> None:
    typed, general = both_ways(listing([documented_record(**change)]))
    assert typed[0].session is None, why
    assert_same_events(typed[0], general[0])


@pytest.mark.parametrize(
    "start", ["2020-02-12T06:41:12-05:00", "2020-02-12T11:41:12.250Z", "2020-02-12t11:41:12z"]
)
def test_a_date_in_another_rfc3339_form_gives_the_event_form(start: str) -> None:
    typed, general = both_ways(listing([documented_record(startTime=start)]))
    assert_same_events(typed[0], general[0])
    value = orjson.loads(EventBuilder(1, TopicSettings(), POLICIES[0]).completed(typed[0]).value)
    assert value["session"]["startTime"].startswith("2020-02-12T11:41:12")
    assert value["session"]["startTime"].endswith("Z")


def test_fields_the_typed_path_passes_on_unchanged() -> None:
    """Missing stays missing and null stays null; __type goes; key becomes text."""
    record = documented_record(key=1111, width=None, guests=[{"__type": "g", "location": None}])
    del record["height"]
    typed, general = both_ways(listing([record]))
    assert typed[0].session is not None
    assert_same_events(typed[0], general[0])
    session = orjson.loads(EventBuilder(1, TopicSettings(), POLICIES[0]).completed(typed[0]).value)
    assert session["session"]["width"] is None and "height" not in session["session"]
    assert session["session"]["key"] == "1111"
    assert session["session"]["guests"] == [{"location": None}]


def test_integers_beyond_64_bits() -> None:
    """The one known difference: orjson, which reads the general path's records, reads such
    an integer as the nearest float; msgspec reads and writes it exactly."""
    huge = str(2**64 + 1).encode()
    payload = listing([documented_record(kbytes=123456789)]).replace(b"123456789", huge)
    typed, general = both_ways(payload)
    builder = EventBuilder(1, TopicSettings(), POLICIES[0])
    assert orjson.loads(builder.completed(general[0]).value)["session"]["kbytes"] == float(2**64)
    assert b'"kbytes":' + huge + b"," in builder.completed(typed[0]).value


# -- every record, both ways ------------------------------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
event_form = st.datetimes(timezones=st.none()).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
# Forms msgspec reads as dates (the builder hands those not whole-second UTC to the general
# path; 9999-12-31 overflows when the duration is added) ...
TYPED_FORMS = [
    "2026-02-08T12:00:22+00:00",
    "2026-02-08T12:00:22-00:00",
    "2026-02-08 12:00:22Z",
    "2026-02-08T12:00:22.5Z",
    "2026-02-08T12:00:22.000Z",
    "2026-02-08t12:00:22z",
    "2026-02-08T12:00:22+05:00",
    "9999-12-31T23:59:59Z",
]
# ... and forms it does not.
OTHER_FORMS = [
    "2026-02-08T12:00:22",
    "2026-02-08T12:00:60Z",
    "2026-02-30T12:00:00Z",
    "/Date(1581507672000)/",
    "",
    "yesterday",
]
dates = st.one_of(
    event_form,
    st.sampled_from(TYPED_FORMS + OTHER_FORMS),
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
)
numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    text,
)
strings = st.one_of(text, st.none(), st.integers(0, 9))
location = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "__type": text,
            "city": strings,
            "region": strings,
            "countryCode": strings,
            "extra": text,
        },
    ),
    st.none(),
    text,
)
guest = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "__type": text,
            "type": strings,
            "status": strings,
            "startTime": dates,
            "duration": numbers,
            "kbytes": numbers,
            "ip": strings,
            "location": location,
            "name": strings,
            "email": strings,
            "phone": strings,
            "error": strings,
            "clientVersion": strings,
            "protocolVersion": st.one_of(strings, numbers),
            "browser": text,
        },
    ),
    st.none(),
    st.integers(0, 9),
)
session = st.fixed_dictionaries(
    {},
    optional={
        "__type": st.sampled_from(["ActivityService+session", None]),
        "id": st.one_of(st.integers(-5, 2**53), st.booleans(), text),
        "type": strings,
        "status": strings,
        "startTime": dates,
        "key": st.one_of(strings, st.booleans()),
        "width": numbers,
        "height": numbers,
        "duration": numbers,
        "kbytes": numbers,
        "isReverse": st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
        "guests": st.one_of(st.lists(guest, max_size=3), st.none(), text),
        "endTime": dates,
        "region": text,
    },
)
# Records and guests in the documented shape, their dates in every form msgspec reads, so
# that the typed path is taken often and meets each of the builder's own checks.
typed_dates = st.one_of(event_form, st.sampled_from(TYPED_FORMS))
maybe_text = st.one_of(text, st.none())
documented_guest = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["visitor", "agent", "host", "guest", ""]),
        "status": st.sampled_from(["C", "X", "A"]),
        "startTime": st.one_of(typed_dates, st.none()),
        "duration": st.one_of(st.integers(0, 10**5), st.floats(0, 10**5, width=32)),
        "kbytes": st.integers(0, 10**5),
        "ip": maybe_text,
        "location": st.one_of(
            st.fixed_dictionaries(
                {"city": maybe_text, "region": maybe_text, "countryCode": maybe_text},
                optional={"__type": text},
            ),
            st.none(),
        ),
        "name": maybe_text,
        "email": maybe_text,
        "phone": maybe_text,
    },
    optional={
        "__type": text,
        "error": text,
        "clientVersion": text,
        "protocolVersion": st.integers(0, 9),
    },
)
documented = st.builds(
    documented_record,
    id=st.integers(1, 2**53),
    startTime=typed_dates,
    duration=st.one_of(st.integers(-1, 10**6), st.floats(0, 10**6), st.none()),
    key=st.one_of(text, st.integers(0, 10**9), st.none()),
    guests=st.one_of(st.lists(st.one_of(documented_guest, documented_guest, guest), max_size=3)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.one_of(documented, session), min_size=1, max_size=4),
    user_name=st.one_of(text, st.none(), st.integers(0, 3)),
    partner_user_id=st.one_of(text, st.none()),
)
def test_every_record_gives_the_same_event_either_way(
    records: list[dict[str, Any]], user_name: Any, partner_user_id: Any
) -> None:
    typed, general = both_ways(listing(records, user_name, partner_user_id))
    for fast, slow in zip(typed, general, strict=True):
        assert_same_events(fast, slow)


def test_the_strategy_reaches_the_typed_path() -> None:
    """Without this, the property above could pass by never taking the typed path."""
    typed = 0

    @settings(max_examples=100, deadline=None)
    @given(record=documented)
    def count(record: dict[str, Any]) -> None:
        nonlocal typed
        typed += read_session_page("op", listing([record]), 0).records[0].session is not None

    count()
    assert typed > 20


def test_the_started_stream_finds_the_oldest_open_start_in_typed_records() -> None:
    """The fast scan looks back to the oldest session the started stream saw open."""
    from poller.streams.started import _earliest_start

    starts = ["2026-03-10T12:00:05Z", "2026-03-10T11:58:00Z", "2026-03-10T12:01:00+00:00"]
    payload = listing([documented_record(id=n + 1, startTime=s) for n, s in enumerate(starts)])
    typed, general = both_ways(payload)
    assert all(record.session is not None for record in typed)
    oldest = datetime(2026, 3, 10, 11, 58, tzinfo=UTC)
    assert _earliest_start(typed, None) == _earliest_start(general, None) == oldest
