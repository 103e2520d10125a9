"""Record -> event: the value shape, the headers, the ids, PII and bad records."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.errors import BadRecord
from poller.events import EVENT_ID_NAMESPACE, EventBuilder, PiiPolicy, event_id
from poller.glance.dates import parse_returned, returned_for_event, to_event
from poller.glance.records import SourceRecord, parse_session_page
from poller.settings import TopicSettings

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
