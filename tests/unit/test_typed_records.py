"""The fast paths (records checked in Rust, or decoded by msgspec) and the general path
(JSON values) agree.

A listing's records in exactly the documented shape are read by the native fast path
(``native/``, ``poller._fastpath``) or decoded into typed msgspec structs, and built into
events without the general path's field-by-field checks; everything else takes the general
path. Whichever path a record takes, its event (or its dead-letter reason) must be the same:
these tests build every record each way and compare. Each test runs with the native path
(falling back to msgspec for what it declines) and with msgspec alone.
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
from poller.native import NATIVE
from poller.settings import TopicSettings

POLICIES = (PiiPolicy("keep"), PiiPolicy("hash", "salt"), PiiPolicy("drop"))
FAST_PATHS = pytest.mark.parametrize("native", [True, False], ids=["native", "msgspec"])


def test_the_native_fast_path_is_built() -> None:
    """`make install` builds it (Rust, native/); without it every other test here would
    quietly measure the msgspec path twice."""
    assert NATIVE, "poller._fastpath is missing: install Rust (cargo) and run `make install`"


def test_the_native_fast_path_is_an_optimised_build() -> None:
    """An editable install builds cargo's debug profile unless pyproject.toml says otherwise:
    several times slower, and every benchmark would measure it."""
    from poller import _fastpath

    assert not _fastpath.DEBUG_BUILD, "poller._fastpath was built without --release"


def took_fast_path(record: SourceRecord, native: bool) -> bool:
    """Whether the record took the fast path under test."""
    return (record.native if native else record.session) is not None


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


def builder_for(pii: PiiPolicy) -> EventBuilder:
    return EventBuilder(12345, TopicSettings(), pii)


def read_fast(
    payload: bytes, native: bool = True, builder: EventBuilder | None = None
) -> list[SourceRecord]:
    """The page as the client reads it: fast where it can, natively with ``builder``'s
    policy (the native path renders records as it reads them) or with msgspec alone."""
    fast_path = (builder or builder_for(POLICIES[0])).native if native else None
    return read_session_page("PartnerCompletedSessions", payload, 0, native=fast_path).records


def both_ways(payload: bytes, native: bool = True) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The page read fast and as JSON values only."""
    typed = read_fast(payload, native)
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


def assert_same_events(payload: bytes, native: bool = True) -> None:
    """Every record of the page gives the same events read fast as read as JSON values,
    under every PII policy, as completed and as started."""
    general = parse_session_page(orjson.loads(payload)["d"], 0).records
    for pii in POLICIES:
        builder = builder_for(pii)
        typed = read_fast(payload, native, builder)
        assert len(typed) == len(general)
        for fast_record, slow in zip(typed, general, strict=True):
            for kind in ("completed", "started, seen open", "started, seen ended"):
                assert outcome(builder, kind, fast_record) == outcome(builder, kind, slow), (
                    pii.mode,
                    kind,
                )
            # Building never changes the record: its started and completed events come
            # from it too.
            assert fast_record.raw == slow.raw
            assert fast_record.start() == slow.start()


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


@FAST_PATHS
def test_the_seed_sample_takes_the_fast_path_with_byte_identical_events(
    seed_sample: dict[str, Any], native: bool
) -> None:
    payload = orjson.dumps(seed_sample)
    typed, general = both_ways(payload, native)
    assert typed and all(took_fast_path(record, native) for record in typed)
    assert_same_events(payload, native)
    builder = builder_for(PiiPolicy("keep"))
    for fast, slow in zip(read_fast(payload, native, builder), general, strict=True):
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
@FAST_PATHS
def test_a_record_off_the_documented_shape_takes_the_general_path(
    change: dict[str, Any], why: str, native: bool
) -> None:
    payload = listing([documented_record(**change)])
    typed, _ = both_ways(payload, native)
    assert typed[0].session is None and typed[0].native is None, why
    assert_same_events(payload, native)


@pytest.mark.parametrize(
    "start", ["2020-02-12T06:41:12-05:00", "2020-02-12T11:41:12.250Z", "2020-02-12t11:41:12z"]
)
@FAST_PATHS
def test_a_date_in_another_rfc3339_form_gives_the_event_form(start: str, native: bool) -> None:
    payload = listing([documented_record(startTime=start)])
    assert_same_events(payload, native)
    builder = builder_for(POLICIES[0])
    value = orjson.loads(builder.completed(read_fast(payload, native, builder)[0]).value)
    assert value["session"]["startTime"].startswith("2020-02-12T11:41:12")
    assert value["session"]["startTime"].endswith("Z")


@FAST_PATHS
def test_fields_the_fast_path_passes_on_unchanged(native: bool) -> None:
    """Missing stays missing and null stays null; __type goes; key becomes text."""
    record = documented_record(key=1111, width=None, guests=[{"__type": "g", "location": None}])
    del record["height"]
    payload = listing([record])
    builder = builder_for(POLICIES[0])
    typed = read_fast(payload, native, builder)
    assert took_fast_path(typed[0], native)
    assert_same_events(payload, native)
    session = orjson.loads(builder.completed(typed[0]).value)
    assert session["session"]["width"] is None and "height" not in session["session"]
    assert session["session"]["key"] == "1111"
    assert session["session"]["guests"] == [{"location": None}]


@FAST_PATHS
def test_integers_beyond_64_bits(native: bool) -> None:
    """The one known difference: orjson, which reads the general path's records, reads such
    an integer as the nearest float; msgspec reads and writes it exactly (the native path
    leaves such a record to msgspec)."""
    huge = str(2**64 + 1).encode()
    payload = listing([documented_record(kbytes=123456789)]).replace(b"123456789", huge)
    typed, general = both_ways(payload, native)
    assert typed[0].native is None
    builder = builder_for(POLICIES[0])
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


# ... and in the narrower shape the native path takes: integers, and event-form dates only
# (four-digit years: strftime writes year 999 as "999").
native_event_form = st.datetimes(timezones=st.none()).map(
    lambda d: d.isoformat(timespec="seconds") + "Z"
)
native_guest = st.fixed_dictionaries(
    {},
    optional={
        "__type": text,
        "type": maybe_text,
        "status": maybe_text,
        "startTime": st.one_of(native_event_form, st.none()),
        "duration": st.one_of(st.integers(-(2**63), 2**63 - 1), st.none()),
        "kbytes": st.one_of(st.integers(0, 10**9), st.none()),
        "ip": maybe_text,
        "location": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "__type": text,
                    "city": maybe_text,
                    "region": maybe_text,
                    "countryCode": maybe_text,
                },
            ),
            st.none(),
        ),
        "name": maybe_text,
        "email": maybe_text,
        "phone": maybe_text,
        "error": maybe_text,
        "clientVersion": maybe_text,
        "protocolVersion": st.one_of(st.integers(-(2**63), 2**63 - 1), maybe_text),
    },
)
native_documented = st.builds(
    documented_record,
    id=st.integers(1, 2**63 - 1),
    startTime=native_event_form,
    width=st.one_of(st.integers(-(2**63), 2**63 - 1), st.none()),
    duration=st.one_of(st.integers(-1, 10**11), st.none()),
    key=st.one_of(text, st.integers(-(2**63), 2**63 - 1), st.none()),
    isReverse=st.one_of(st.booleans(), st.none()),
    guests=st.one_of(st.lists(native_guest, max_size=3), st.none()),
)


@FAST_PATHS
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.one_of(documented, native_documented, session), min_size=1, max_size=4),
    user_name=st.one_of(text, st.none(), st.integers(0, 3)),
    partner_user_id=st.one_of(text, st.none()),
)
def test_every_record_gives_the_same_event_either_way(
    records: list[dict[str, Any]], user_name: Any, partner_user_id: Any, native: bool
) -> None:
    assert_same_events(listing(records, user_name, partner_user_id), native)


@FAST_PATHS
def test_the_strategy_reaches_the_fast_path(native: bool) -> None:
    """Without this, the property above could pass by never taking the fast path."""
    taken = 0

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(record=native_documented if native else documented)
    def count(record: dict[str, Any]) -> None:
        nonlocal taken
        taken += took_fast_path(read_fast(listing([record]), native)[0], native)

    count()
    # Every record of the native strategy is in the native shape; about a third of msgspec's.
    assert taken > (80 if native else 20)


@FAST_PATHS
def test_the_started_stream_finds_the_oldest_open_start_in_fast_records(native: bool) -> None:
    """The fast scan looks back to the oldest session the started stream saw open."""
    from poller.streams.started import _earliest_start

    starts = ["2026-03-10T12:00:05Z", "2026-03-10T11:58:00Z", "2026-03-10T12:01:00Z"]
    payload = listing([documented_record(id=n + 1, startTime=s) for n, s in enumerate(starts)])
    typed, general = both_ways(payload, native)
    assert all(took_fast_path(record, native) for record in typed)
    oldest = datetime(2026, 3, 10, 11, 58, tzinfo=UTC)
    assert _earliest_start(typed, None) == _earliest_start(general, None) == oldest


SESSION_AS_ARRAY = '["ActivityService+session", 5, "G", "C", "2026-02-08T12:00:22Z"]'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (SESSION_AS_ARRAY, "a record as an array of its fields in order"),
        ('{"id": 5, "startTime": "2026-02-08T12:00:22Z", "guests": [["host"]]}', "a guest"),
        (
            '{"id": 5, "startTime": "2026-02-08T12:00:22Z", "duration": 3,'
            ' "guests": [{"location": ["Boston"]}]}',
            "a location",
        ),
        (
            '{"id": 5, "id": 6, "startTime": "2026-02-08T12:00:22Z", "duration": 3}',
            "a repeated field",
        ),
        ('{"id": 5, "startTime": "2026-02-08T12:00:22Z", "duration": 3.0}', "a float"),
        ('{"id": 9223372036854775808, "startTime": "2026-02-08T12:00:22Z"}', "an id past int64"),
        ('{"id": 5, "startTime": "9999-12-31T23:59:59Z", "duration": 1}', "an end past 9999"),
    ],
)
def test_the_native_path_leaves_what_it_would_bend_to_python(text: str, why: str) -> None:
    """serde reads a struct from an array too, and a float or an out-of-range integer could
    be rounded: the native path declines each, and the outcome is the Python paths'."""
    payload = listing([]).replace(b'"sessions":[]', b'"sessions":[' + text.encode() + b"]")
    builder = builder_for(POLICIES[0])
    typed = read_fast(payload, True, builder)
    assert len(typed) == 1
    if typed[0].native is not None:
        assert outcome(builder, "completed", typed[0])[0] == "dead letter", why
    assert_same_events(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'[{"nextId": 0, "users": []}]',
        b'{"d": [0, []]}',
        b'{"d": {"users": [["agent", null, []]]}}',
    ],
)
def test_an_envelope_as_arrays_is_refused_by_both_readers(payload: bytes) -> None:
    from poller.errors import RetriableUpstreamError

    for native in (True, False):
        with pytest.raises(RetriableUpstreamError):
            read_fast(payload, native)


def test_a_record_read_under_another_policy_gets_the_builders_own() -> None:
    """The native path renders a record under the policy of the builder it was read with; a
    builder with another policy builds it from its text instead, never with the first's."""
    payload = listing([documented_record()])
    keep, hashed = builder_for(PiiPolicy("keep")), builder_for(PiiPolicy("hash", "salt"))
    record = read_fast(payload, True, keep)[0]
    assert record.native is not None
    general = parse_session_page(orjson.loads(payload)["d"], 0).records[0]
    built = outcome(hashed, "completed", record)
    assert built == outcome(hashed, "completed", general)
    assert built[2]["session"]["guests"][0]["email"].startswith("sha256:")
