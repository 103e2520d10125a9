"""Record -> event: the value shape, the headers, the ids, PII and bad records."""

from __future__ import annotations

import copy
import hashlib
import hmac
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.errors import BadRecord
from poller.events import (
    EVENT_ID_NAMESPACE,
    CountsSnapshot,
    EventBuilder,
    PiiPolicy,
    event_id,
    to_json,
)
from poller.glance.dates import parse_returned, returned_for_event, to_event
from poller.glance.records import SourceRecord, parse_session_page
from poller.settings import EventSettings, TopicSettings
from poller.window import Window

TOPICS = TopicSettings()


def builder(pii: PiiPolicy | None = None) -> EventBuilder:
    return EventBuilder(12345, TOPICS, pii or PiiPolicy("keep"))


def seed_records(seed_sample: dict[str, Any]) -> list[SourceRecord]:
    return parse_session_page(copy.deepcopy(seed_sample["d"]), 0).records


def test_seed_video_session_becomes_the_documented_event(
    seed_sample: dict, completed_schema: Any
) -> None:
    record = seed_records(seed_sample)[0]
    event = builder().completed(record)
    assert event.topic == "glance.session.completed"
    assert event.key == b"56960588"
    value = orjson.loads(event.value)
    completed_schema.validate(value)
    expected_session = {k: v for k, v in record.raw.items() if k != "__type"}
    expected_session["endTime"] = "2020-02-12T11:41:25Z"
    assert value == {
        "partnerId": 12345,
        "userName": "agent.company.glance.net",
        "partnerUserId": "puidValue",
        "session": expected_session,
    }
    headers = dict(event.headers)
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": event_id(12345, 56960588, "completed").encode(),
        "ce_source": b"/glance/partners/12345",
        "ce_type": b"net.glance.session.completed",
        "ce_time": b"2020-02-12T11:41:25Z",
        "ce_subject": b"56960588",
        "content-type": b"application/json",
    }


def test_event_ids_are_deterministic_and_distinct() -> None:
    assert event_id(1, 2, "completed") == event_id(1, 2, "completed")
    ids = {
        event_id(1, 2, "completed"),
        event_id(1, 2, "started"),
        event_id(2, 2, "completed"),
        event_id(1, 3, "completed"),
    }
    assert len(ids) == 4


@given(
    partner=st.integers(1, 2**63),
    session=st.integers(1, 2**63),
    kind=st.sampled_from(["started", "completed"]),
)
def test_event_ids_are_the_documented_uuid5(partner: int, session: int, kind: str) -> None:
    # Ids are a published contract (design.md §3): the fast path must not change one.
    expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{partner}/{session}/{kind}")
    assert event_id(partner, session, kind) == str(expected)


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=3))]
        ),
    ),
    form=st.sampled_from(["iso", "z", "naive", "asmx"]),
)
def test_dates_in_event_form_match_the_general_path(moment: datetime, form: str) -> None:
    text = {
        "iso": moment.isoformat(),
        "z": moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z",
        "naive": moment.astimezone(UTC).replace(tzinfo=None).isoformat(),
        "asmx": f"/Date({int(moment.timestamp() * 1000)})/",
    }[form]
    assert returned_for_event(text) == (to_event(parse_returned(text)), parse_returned(text))


@pytest.mark.parametrize(
    "text", ["2026-02-30T10:00:00Z", "2026-13-01T10:00:00Z", "0000-01-01T00:00:00Z"]
)
def test_a_date_of_the_right_shape_that_does_not_exist_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601"):
        returned_for_event(text)


def raw_session(**overrides: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "__type": "ActivityService+session",
        "id": 99,
        "type": "C",
        "status": "C",
        "startTime": "/Date(1581507672000)/",
        "key": 6684,
        "width": 0,
        "height": 0,
        "duration": 147,
        "kbytes": 3,
        "isReverse": False,
        "guests": [
            {
                "type": "visitor",
                "status": "C",
                "startTime": "2016-02-23T17:17:22-05:00",
                "duration": 147,
                "ip": "108.49.96.66",
                "location": None,
                "name": "Greta Guest",
                "email": "sales@glance.net",
                "phone": None,
            }
        ],
    }
    session.update(overrides)
    return session


def build(raw: Any, pii: PiiPolicy | None = None) -> dict[str, Any]:
    event = builder(pii).completed(SourceRecord("u", "p", raw))
    return orjson.loads(event.value)["session"]


def test_normalisation_of_dates_keys_and_types(completed_schema: Any) -> None:
    session = build(raw_session(status="Z", somethingNew={"a": 1}))
    assert session["startTime"] == "2020-02-12T11:41:12Z"
    assert session["endTime"] == "2020-02-12T11:43:39Z"
    assert session["key"] == "6684"
    assert session["guests"][0]["startTime"] == "2016-02-23T22:17:22Z"
    assert "__type" not in session
    # Unknown letters and unknown fields pass through untouched.
    assert session["status"] == "Z"
    assert session["somethingNew"] == {"a": 1}
    completed_schema.validate(
        {"partnerId": 1, "userName": "u", "partnerUserId": "p", "session": session}
    )


def test_pii_keep_hash_drop(completed_schema: Any) -> None:
    kept = build(raw_session())["guests"][0]
    assert (kept["name"], kept["email"], kept["ip"], kept["phone"]) == (
        "Greta Guest",
        "sales@glance.net",
        "108.49.96.66",
        None,
    )
    hashed = build(raw_session(), PiiPolicy("hash", "pepper"))["guests"][0]
    assert hashed["name"].startswith("sha256:") and hashed["name"] != kept["name"]
    assert hashed["phone"] is None
    again = build(raw_session(), PiiPolicy("hash", "pepper"))["guests"][0]
    other_salt = build(raw_session(), PiiPolicy("hash", "salt2"))["guests"][0]
    assert hashed["email"] == again["email"] != other_salt["email"]
    dropped = build(raw_session(), PiiPolicy("drop"))["guests"][0]
    assert not {"name", "email", "phone", "ip"} & dropped.keys()
    assert dropped["type"] == "visitor"
    for guest in (hashed, dropped):
        completed_schema.validate(
            {
                "partnerId": 1,
                "userName": None,
                "partnerUserId": None,
                "session": build(raw_session()) | {"guests": [guest]},
            }
        )


def test_hash_policy_needs_a_salt() -> None:
    with pytest.raises(ValueError, match="salt"):
        PiiPolicy("hash")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not an object", "not an object"),
        (raw_session(id=None), "id"),
        (raw_session(id="99"), "id"),
        (raw_session(id=True), "id"),
        (raw_session(startTime="someday"), "startTime"),
        (raw_session(startTime=None), "startTime"),
        (raw_session(duration="abc"), "duration"),
        (raw_session(duration=-1), "duration"),
        (raw_session(width="wide"), "width"),
        (raw_session(guests="none"), "guests"),
        (raw_session(guests=[{"startTime": "later"}]), "guests[0].startTime"),
        (raw_session(key={"k": 1}), "key"),
    ],
)
def test_records_that_cannot_become_events(raw: Any, reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        build(raw)
    assert reason in caught.value.reason
    assert caught.value.record is raw


def test_dead_letter_carries_raw_record_and_reason() -> None:
    raw = raw_session(startTime="someday")
    letter = builder().dead_letter(
        SourceRecord("agent", "puid", raw), "startTime is not a date", "PartnerCompletedSessions"
    )
    assert letter.topic == "glance.dlq"
    assert letter.key == b"99"
    assert orjson.loads(letter.value) == raw
    assert dict(letter.headers) == {
        "dlq_reason": b"startTime is not a date",
        "dlq_partner_id": b"12345",
        "dlq_operation": b"PartnerCompletedSessions",
        "content-type": b"application/json",
        "dlq_user_name": b"agent",
        "dlq_partner_user_id": b"puid",
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=30,
)
session_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers() | json_values,
        "startTime": st.sampled_from(
            [
                "2020-02-12T11:41:12Z",
                "/Date(1581507672000)/",
                "/Date(-99999999999999999)/",
                "9999-12-31T23:59:59Z",
                "x",
            ]
        )
        | json_values,
        "duration": st.integers(min_value=-5, max_value=10**6) | st.floats() | json_values,
        "key": json_values,
        "status": json_values,
        "guests": st.lists(
            st.dictionaries(
                st.sampled_from(["startTime", "location", "name", "duration"]), json_values
            )
        )
        | json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(raw=json_values | session_like, user=json_values)
def test_any_json_shape_becomes_an_event_or_a_bad_record(raw: Any, user: Any) -> None:
    try:
        event = builder(PiiPolicy("hash", "s")).completed(SourceRecord(user, None, raw))
    except BadRecord:
        return
    assert orjson.loads(event.value)["session"]["id"] == raw["id"]


@pytest.mark.parametrize("mode", ["drop", "hash"])
def test_dead_letters_follow_the_pii_policy(mode: str) -> None:
    guest = {"name": "Jane Roe", "email": "jane@example.com", "phone": "555", "ip": "1.2.3.4"}
    raw = raw_session(startTime="someday", guests=[dict(guest), "not a guest"])
    policy = PiiPolicy(mode, "salt-123456") if mode == "hash" else PiiPolicy("drop")  # type: ignore[arg-type]
    letter = builder(policy).dead_letter(SourceRecord("u", "p", raw), "bad", "Op")
    published = orjson.loads(letter.value)
    text = letter.value.decode()
    for value in guest.values():
        assert value not in text, f"{value} reached the dead-letter topic under {mode}"
    assert published["guests"][1] == "not a guest"
    if mode == "hash":
        assert published["guests"][0]["email"].startswith("sha256:")
    else:
        assert "email" not in published["guests"][0]
    assert raw["guests"][0] == guest, "the record itself is left as it was"


def test_an_id_of_zero_is_a_dead_letter_not_an_event() -> None:
    with pytest.raises(BadRecord, match="id"):
        build(raw_session(id=0))


# Field by field: what a consumer may rely on in a session, and what becomes a dead letter


def test_the_largest_id_the_state_can_hold_is_an_event() -> None:
    event = builder().completed(SourceRecord("u", "p", raw_session(id=2**63 - 1)))
    assert event.session_id == 2**63 - 1 and event.key == b"9223372036854775807"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"type": 1}, "type is not a string"),
        ({"status": ["C"]}, "status is not a string"),
        ({"width": "1"}, "width is not a number"),
        ({"height": True}, "height is not a number"),
        ({"kbytes": {}}, "kbytes is not a number"),
        ({"isReverse": 0}, "isReverse is not a boolean"),
        ({"key": True}, "key is not text"),
        ({"key": 1.5}, "key is not text"),
        ({"duration": float("inf")}, "duration is missing"),
        ({"duration": float("nan")}, "duration is missing"),
        ({"duration": None}, "duration is missing"),
        ({"duration": True}, "duration is missing"),
        ({"duration": 1e300}, "duration is out of range"),
        ({"id": -4}, "id is missing or not a positive integer"),
        # Ids are remembered as SQLite integers: one beyond 2**63-1 cannot be, so no event.
        ({"id": 2**63}, "id is missing or not a positive integer"),
        ({"id": 2**64 - 1}, "id is missing or not a positive integer"),
        ({"guests": ["x"]}, "guests[0] is not an object"),
        ({"guests": [{}, {"duration": "1"}]}, "guests[1].duration is not a number"),
        ({"guests": [{"kbytes": "1"}]}, "guests[0].kbytes is not a number"),
        ({"guests": [{"kbytes": False}]}, "guests[0].kbytes is not a number"),
        ({"guests": [{"location": "here"}]}, "guests[0].location is not an object"),
        ({"guests": [{"startTime": "later"}]}, "guests[0].startTime is not a date"),
        ({"guests": {}}, "guests is not a list"),
    ],
)
def test_the_reason_of_a_dead_letter_names_the_field(
    overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(BadRecord) as caught:
        build(raw_session(**overrides))
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": None, "status": None, "width": None, "height": None, "kbytes": None},
        {"isReverse": None, "key": None, "guests": None},
        {"width": 1.5, "height": 2, "kbytes": 0.5, "isReverse": True, "duration": 0},
        {"key": "k-1", "duration": 2.5},
        {"guests": [{"duration": 1.5, "kbytes": 2, "location": None, "startTime": None}]},
    ],
)
def test_what_upstream_may_leave_out_or_vary_still_makes_an_event(
    overrides: dict[str, Any],
) -> None:
    session = build(raw_session(**overrides))
    for name, value in overrides.items():
        if name not in ("key", "guests"):
            assert session[name] == value


def test_an_integer_key_becomes_text_and_text_stays_as_it_is() -> None:
    assert build(raw_session(key=6684))["key"] == "6684"
    assert build(raw_session(key="abc"))["key"] == "abc"
    assert "key" in build(raw_session(key=None)) and build(raw_session(key=None))["key"] is None


def test_the_end_of_a_completed_session_is_its_start_plus_its_duration() -> None:
    session = build(raw_session(startTime="2020-02-12T11:41:12Z", duration=0.5))
    assert session["endTime"] == "2020-02-12T11:41:12.500Z"


def test_a_guest_location_loses_its_type_tag_and_the_record_is_untouched() -> None:
    location = {"__type": "Location", "city": "Boston"}
    guest = {"__type": "Guest", "location": location, "startTime": "/Date(1581507672000)/"}
    raw = raw_session(guests=[guest])
    (shown,) = build(raw)["guests"]
    assert shown == {"location": {"city": "Boston"}, "startTime": "2020-02-12T11:41:12Z"}
    assert raw["guests"][0]["location"] == {"__type": "Location", "city": "Boston"}
    assert raw["guests"][0]["__type"] == "Guest"
    plain = build(raw_session(guests=[{"location": {"city": "Boston"}}]))["guests"][0]
    assert plain["location"] == {"city": "Boston"}


def test_a_started_event_says_whether_the_session_was_seen_open() -> None:
    raw = raw_session(duration=None, status="A")
    for observed in (True, False):
        event = builder().started(SourceRecord("u", "p", raw), observed_active=observed)
        body = orjson.loads(event.value)
        assert body["observedActive"] is observed
        assert "endTime" not in body["session"] and body["session"]["duration"] is None
        headers = dict(event.headers)
        assert headers["ce_type"] == b"net.glance.session.started"
        assert headers["ce_time"] == body["session"]["startTime"].encode()
        assert headers["ce_id"] == event_id(12345, 99, "started").encode()
        assert event.topic == TOPICS.started and event.key == b"99"
    with pytest.raises(BadRecord, match="duration is not a number"):
        builder().started(SourceRecord("u", "p", raw_session(duration="1")), observed_active=True)


def test_a_completed_event_carries_its_headers_and_no_observed_flag() -> None:
    event = builder().completed(SourceRecord("u", "p", raw_session()))
    body = orjson.loads(event.value)
    assert "observedActive" not in body
    assert (body["partnerId"], body["userName"], body["partnerUserId"]) == (12345, "u", "p")
    assert event.headers == [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id(12345, 99, "completed").encode()),
        ("ce_source", b"/glance/partners/12345"),
        ("ce_type", b"net.glance.session.completed"),
        ("ce_time", b"2020-02-12T11:43:39Z"),
        ("ce_subject", b"99"),
        ("content-type", b"application/json"),
    ]
    assert event.session_id == 99
    assert event.start_time == datetime(2020, 2, 12, 11, 41, 12, tzinfo=UTC)


@pytest.mark.parametrize(("user", "puid"), [(1, None), (None, 2)])
def test_users_that_are_not_text_are_bad_records(user: Any, puid: Any) -> None:
    with pytest.raises(BadRecord, match="is not a string"):
        builder().completed(SourceRecord(user, puid, raw_session()))
    event = builder().completed(SourceRecord(None, None, raw_session()))
    assert orjson.loads(event.value)["userName"] is None


def digest_key(value: bytes) -> bytes:
    return b"record-" + hashlib.sha256(value).hexdigest()[:32].encode()


def test_a_dead_letter_without_an_id_is_keyed_by_its_digest_and_has_no_user_headers() -> None:
    """A compacted dead-letter topic refuses a record without a key: every letter has one."""
    letter = builder().dead_letter(SourceRecord(3, None, {"id": "7"}), "bad", "Op")
    assert letter.key == digest_key(letter.value) and letter.session_id is None
    assert "dlq_user_name" not in dict(letter.headers)
    assert "dlq_partner_user_id" not in dict(letter.headers)
    listed = builder().dead_letter(SourceRecord("u", "p", ["not", "a", "record"]), "bad", "Op")
    assert listed.key == digest_key(listed.value)
    assert orjson.loads(listed.value) == ["not", "a", "record"]
    again = builder().dead_letter(SourceRecord("u", "p", ["not", "a", "record"]), "bad", "Op")
    assert again.key == listed.key != letter.key


# PII


def test_hashing_is_keyed_sha256_and_leaves_missing_values_missing() -> None:
    policy = PiiPolicy("hash", "pepper")
    guest: dict[str, Any] = {"name": "Jane", "email": None, "type": "visitor"}
    policy.apply(guest)
    expected = hmac.new(b"pepper", b"Jane", hashlib.sha256).hexdigest()
    assert guest == {"name": f"sha256:{expected}", "email": None, "type": "visitor"}


def test_pii_is_applied_to_every_guest_by_the_policy_from_the_settings() -> None:
    hashed = PiiPolicy.from_settings(EventSettings(pii="hash", pii_salt="s"))  # type: ignore[arg-type]
    assert hashed.mode == "hash"
    guests = [{"name": "A"}, {"name": "B", "phone": "1"}]
    shown = build(raw_session(guests=guests), hashed)["guests"]
    assert all(g["name"].startswith("sha256:") for g in shown)
    assert (
        shown[1]["phone"]
        == PiiPolicy("hash", "s").scrubbed({"guests": [{"phone": "1"}]})["guests"][0]["phone"]
    )
    dropped = PiiPolicy.from_settings(EventSettings(pii="drop"))
    assert build(raw_session(guests=guests), dropped)["guests"] == [{}, {}]
    kept = PiiPolicy.from_settings(EventSettings())
    assert build(raw_session(guests=guests), kept)["guests"] == guests


def test_scrubbing_leaves_what_is_not_shaped_like_guests() -> None:
    policy = PiiPolicy("drop")
    for raw in ("text", {"guests": "none"}, {"other": 1}, None):
        assert policy.scrubbed(raw) == raw
    raw = {"guests": [{"name": "A"}], "id": 1}
    assert PiiPolicy("keep").scrubbed(raw) is raw
    assert policy.scrubbed(raw) == {"guests": [{}], "id": 1}
    assert raw == {"guests": [{"name": "A"}], "id": 1}


# Dead letters for what Kafka refused, and counts snapshots


def test_a_refused_event_becomes_a_letter_that_fits_and_says_so() -> None:
    event = builder().completed(SourceRecord("u", "p", raw_session()))
    size = len(event.value)
    cut = builder().refused(event, "too large", "Op", 4096 + 2 * 100)
    body = orjson.loads(cut.value)
    assert body == {
        "partnerId": 12345,
        "sessionId": 99,
        "size": size,
        "truncated": True,
        "value": event.value[:100].decode(),
    }
    assert cut.headers == [
        ("dlq_reason", b"too large"),
        ("dlq_partner_id", b"12345"),
        ("dlq_operation", b"Op"),
        ("dlq_session_id", b"99"),
        ("dlq_event_type", b"net.glance.session.completed"),
        ("dlq_size", str(size).encode()),
        ("content-type", b"application/json"),
        ("dlq_truncated", b"true"),
    ]
    assert (cut.topic, cut.key, cut.session_id, cut.start_time) == (
        TOPICS.dlq,
        b"99",
        99,
        event.start_time,
    )
    assert len(cut.value) <= 4096 + 200
    whole = builder().refused(event, "invalid", "Op", 4096 + 2 * size)
    assert orjson.loads(whole.value)["truncated"] is False
    assert orjson.loads(whole.value)["value"] == event.value.decode()
    assert "dlq_truncated" not in dict(whole.headers)
    tiny = builder().refused(event, "invalid", "Op", 100)
    assert orjson.loads(tiny.value)["value"] == "" and orjson.loads(tiny.value)["truncated"]


def test_a_counts_snapshot_is_one_event_per_instant() -> None:
    as_of = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    day = Window(datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC))
    active = [{"type": "C", "status": "A", "count": 2}, {"type": "V", "status": "A", "count": 1}]
    completed = [{"type": "C", "status": "C", "count": 5}]
    event = builder().counts(CountsSnapshot(as_of, day, active, completed))
    assert orjson.loads(event.value) == {
        "partnerId": 12345,
        "asOf": "2026-03-10T12:30:00Z",
        "day": "2026-03-10",
        "rangeStart": "2026-03-10T00:00:00Z",
        "rangeEnd": "2026-03-11T00:00:00Z",
        "active": active,
        "completed": completed,
        "totals": {"active": 3, "completed": 5},
    }
    ce_id = str(uuid.uuid5(EVENT_ID_NAMESPACE, "12345/counts/2026-03-10T12:30:00Z"))
    assert event.headers == [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"/glance/partners/12345"),
        ("ce_type", b"net.glance.session.counts"),
        ("ce_time", b"2026-03-10T12:30:00Z"),
        ("ce_subject", b"12345"),
        ("content-type", b"application/json"),
    ]
    assert (event.topic, event.key, event.session_id) == (TOPICS.counts, b"12345", None)


def test_every_pii_field_is_handled_whichever_are_present() -> None:
    for mode, expected in (("drop", {"type": "v"}), ("keep", {"ip": "1.2.3.4", "type": "v"})):
        guest = {"ip": "1.2.3.4", "type": "v"}
        PiiPolicy(mode).apply(guest)  # type: ignore[arg-type]
        assert guest == expected, mode
    guest = {"phone": "555", "type": "v"}
    PiiPolicy("hash", "s").apply(guest)
    assert guest["phone"].startswith("sha256:") and guest["type"] == "v"


def test_an_event_value_holds_no_more_memory_than_its_length() -> None:
    """orjson hands back its working buffer (4 KiB at least) untrimmed: an event awaiting its
    acknowledgement must not hold ten times its size."""
    body = {"session": {"notes": "x" * 800}}
    tracemalloc.start()
    try:
        values = [to_json(body) for _ in range(100)]
        used, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert orjson.loads(values[0]) == body
    assert used < 2 * 100 * len(values[0])


# What a dead letter says, in the words an operator reads in dlq_reason


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: builder().completed(SourceRecord("u", "p", [1])), "the session record is not"),
        (lambda: builder().completed(SourceRecord(7, "p", raw_session())), "userName is not"),
        (lambda: builder().completed(SourceRecord("u", 7, raw_session())), "partnerUserId is not"),
        (
            lambda: builder().started(
                SourceRecord("u", "p", raw_session(duration="1")), observed_active=True
            ),
            "duration is not a number",
        ),
    ],
)
def test_the_reason_of_a_dead_letter_names_the_record_or_its_users(make: Any, reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        make()
    assert caught.value.reason.startswith(reason)


def test_a_refused_event_cut_inside_a_character_still_becomes_a_letter() -> None:
    event = builder().completed(
        SourceRecord("u", "p", raw_session(guests=[{"name": "Zoë Ångström 日本"}]))
    )
    first = event.value.index("ë".encode())
    # Room for the first byte of "ë" only: the letter holds the text before it.
    letter = builder().refused(event, "too large", "Op", 4096 + 2 * (first + 1))
    body = orjson.loads(letter.value)
    assert body["truncated"] is True
    assert body["value"] == event.value[:first].decode()


def test_a_refused_dead_letter_claims_no_event_type() -> None:
    dead = builder().dead_letter(SourceRecord("u", "p", raw_session(id="x")), "bad", "Op")
    letter = builder().refused(dead, "too large", "Op", 4096 + 2 * len(dead.value))
    headers = dict(letter.headers)
    assert headers.get("dlq_event_type", b"") == b""
    assert headers["dlq_reason"] == b"too large"
    assert orjson.loads(orjson.loads(letter.value)["value"]) == raw_session(id="x")


def test_a_refused_dead_letter_claims_no_session_id() -> None:
    # A dead letter of a record without a usable id carries no session: its own refusal says
    # none rather than the text "None" a consumer would fail to read as a number.
    dead = builder().dead_letter(SourceRecord("u", "p", raw_session(id="x")), "bad", "Op")
    letter = builder().refused(dead, "too large", "Op", 4096 + 2 * len(dead.value))
    assert "dlq_session_id" not in dict(letter.headers)
    assert orjson.loads(letter.value)["sessionId"] is None
    event = builder().completed(SourceRecord("u", "p", raw_session(id=7)))
    refused = builder().refused(event, "too large", "Op", 4096 + 2 * len(event.value))
    assert dict(refused.headers)["dlq_session_id"] == b"7"
