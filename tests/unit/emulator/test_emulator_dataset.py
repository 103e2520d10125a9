from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller.emulator.dataset import SEED_SAMPLE_PATH, DatasetError, load_dataset

SEED_DOCUMENT = Path("/work/shared/seeds/001_d41ef0ae72b02c58.txt")


def ids_from(start: int = 1) -> Any:
    counter = itertools.count(start)
    return lambda: next(counter)


def sample() -> Any:
    return orjson.loads(SEED_SAMPLE_PATH.read_bytes())


@pytest.mark.skipif(not SEED_DOCUMENT.exists(), reason="the shared seed documents are not here")
def test_the_packaged_sample_is_the_seed_documents_sample() -> None:
    text = SEED_DOCUMENT.read_text()
    start = text.index("{", text.index("Sample JSON Results"))
    assert orjson.loads(text[start:]) == sample()
    assert SEED_SAMPLE_PATH.read_text().strip() == text[start:].strip()


def test_the_seed_sample_loads_as_it_is() -> None:
    sessions = load_dataset(SEED_SAMPLE_PATH, 12345, ids_from())
    users = sample()["d"]["users"]
    assert [s.id for s in sessions] == [56960588, 57125147]
    assert [(s.user_name, s.partner_user_id) for s in sessions] == [
        ("agent.company.glance.net", "puidValue"),
        ("agent2.company.glance.net", "anotherPUID"),
    ]
    for session, user in zip(sessions, users, strict=True):
        assert orjson.dumps(session.record) == orjson.dumps(user["sessions"][0])
    video, cobrowse = sessions
    assert (video.type, video.final_status, video.end - video.start) == ("V", "C", 13)
    assert (cobrowse.type, cobrowse.final_status, cobrowse.end - cobrowse.start) == ("C", "C", 9)


@pytest.mark.parametrize("shape", ["response", "d", "users"])
def test_accepts_the_three_shapes(shape: str) -> None:
    document = sample()
    source = {"response": document, "d": document["d"], "users": document["d"]["users"]}[shape]
    assert len(load_dataset(source, 1, ids_from())) == 2
    assert len(load_dataset(orjson.dumps(source), 1, ids_from())) == 2


def test_active_records_are_open_ended_and_extras_are_kept() -> None:
    host = {"type": "host", "status": "A", "startTime": "2024-03-15T12:00:00Z", "duration": 0}
    waiting = {
        "id": 7,
        "type": "G",
        "status": "W",
        "startTime": "2024-03-15T12:00:00Z",
        "duration": 0,
        "futureField": [1, 2],
        "guests": [{**host, "vendorThing": True}],
    }
    odd_one = {"startTime": "2024-03-15T12:01:00Z", "status": "Z", "duration": 30}
    document = {"users": [{"userName": "u", "partnerUserId": "p", "sessions": [waiting, odd_one]}]}
    active, odd = load_dataset(document, 1, ids_from(100))
    assert active.end is None
    assert active.render(2_000_000_000)["futureField"] == [1, 2]
    assert active.render(2_000_000_000)["status"] == "W"
    assert active.render(2_000_000_000)["guests"][0]["vendorThing"] is True
    # An unknown letter is kept and means "over"; a record without an id gets one, in front.
    assert (odd.final_status, odd.end - odd.start, odd.id) == ("Z", 30, 100)
    assert next(iter(odd.record)) == "id"


def test_loading_does_not_share_the_callers_objects() -> None:
    document = sample()
    sessions = load_dataset(document, 1, ids_from())
    sessions[0].record["key"] = "changed"
    assert document["d"]["users"][0]["sessions"][0]["key"] == "9900V51849"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"nothing": []}, "a data set is"),
        ([{"sessions": [{"id": 1}]}], "startTime is missing"),
        ([{"sessions": [{"id": 1, "startTime": "soon"}]}], "startTime"),
        ([{"sessions": [{"id": "x1", "startTime": "2024-01-01T00:00:00Z"}]}], "id"),
        ([{"sessions": 5}], "not a list"),
    ],
)
def test_refuses_what_it_cannot_place(document: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(document, 1, ids_from())


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        load_dataset(tmp_path / "absent.json", 1, ids_from())
