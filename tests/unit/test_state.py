"""The state file: commits, resumption, the lock, and refusing what it cannot trust."""

from __future__ import annotations

import os
import resource
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from poller import metrics
from poller.cursor import Cursor
from poller.errors import StateError, StateUnwritable
from poller.state import Forget, StateStore, move_aside, parse_cli_date
from poller.window import Window

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def commit_old_style(
    store: StateStore, partner: int, stream: str, cursor: Cursor, ids: Any = ()
) -> None:
    """One stream's cursor and ids in one commit."""
    store.commit(partner, cursors={stream: cursor}, emitted={stream: list(ids)})


def test_new_file_is_private_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.sqlite3"
    store = StateStore.open(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert store.cursor(1, "completed") is None
        assert store.snapshot()["streams"] == []
    finally:
        store.close()


def test_commit_and_resume_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    window = Window(NOW - timedelta(hours=1), NOW)
    commit_old_style(
        store,
        7,
        "completed",
        Cursor(NOW - timedelta(hours=2), window, 4242),
        [(1, NOW), (2, NOW)],
    )
    commit_old_style(store, 7, "completed", Cursor(NOW), [(3, NOW)])
    commit_old_style(store, 8, "completed", Cursor(NOW - timedelta(days=1), window, 17))
    store.close()

    reopened = StateStore.open(path)
    try:
        assert reopened.cursor(7, "completed") == Cursor(NOW)
        assert reopened.cursor(8, "completed") == Cursor(NOW - timedelta(days=1), window, 17)
        assert reopened.already_emitted(7, "completed", [1, 2, 3, 4]) == {1, 2, 3}
        assert reopened.already_emitted(8, "completed", [1, 2, 3]) == set()
        shown = reopened.snapshot()["streams"]
        assert [(s["partnerId"], s["emittedIds"]) for s in shown] == [(7, 3), (8, 0)]
        assert shown[1]["scanInProgress"]["nextId"] == 17
    finally:
        reopened.close()


def test_already_emitted_handles_more_ids_than_sqlite_parameters(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        commit_old_style(store, 1, "completed", Cursor(NOW), [(i, NOW) for i in range(0, 5000, 2)])
        assert len(store.already_emitted(1, "completed", range(5000))) == 2500
    finally:
        store.close()


def test_every_kind_of_id_is_kept_as_an_integer_with_its_start(tmp_path: Path) -> None:
    """Ids of records without one are negative hashes; real ones can be large."""
    store = StateStore.open(tmp_path / "s.db")
    ids = [-(2**62), -5, 7, 2**62]
    try:
        commit_old_style(store, 1, "completed", Cursor(NOW), [(i, NOW) for i in ids])
        commit_old_style(store, 1, "completed", Cursor(NOW), [(7, NOW - timedelta(days=9))])
        assert store.already_emitted(1, "completed", [*ids, 8, 0]) == set(ids)
        # Each keeps the start it was first committed with: all four at NOW, none 9 days back.
        assert store.count_emitted(1, "completed", Window(NOW, NOW + timedelta(seconds=1))) == 4
        assert store.count_before(1, "completed", NOW) == 0
    finally:
        store.close()


def test_reset_scopes(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        for partner in (1, 2):
            commit_old_style(store, partner, "completed", Cursor(NOW), [(partner * 10, NOW)])
        assert store.reset(partner_id=1) == 1
        assert store.cursor(1, "completed") is None
        assert store.cursor(2, "completed") == Cursor(NOW)
        assert store.already_emitted(2, "completed", [20]) == {20}
        assert store.reset() == 1
        assert store.snapshot()["streams"] == []
    finally:
        store.close()


def test_second_process_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    try:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import pathlib, sys; from poller.state import Forget, StateStore; "
                "StateStore.open(pathlib.Path(sys.argv[1]))",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert probe.returncode != 0
        assert "is locked by another glance-poller process" in probe.stderr
        assert str(path) in probe.stderr
    finally:
        store.close()
    StateStore.open(path).close()


def test_garbage_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StateError, match="damaged or not a state file") as caught:
        StateStore.open(path)
    assert caught.value.exit_code == 4
    assert "glance-poller state" in str(caught.value)
    assert path.read_bytes() == before


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    commit_old_style(store, 1, "completed", Cursor(NOW), [(i, NOW) for i in range(20000)])
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError):
        StateStore.open(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer glance-poller"):
        StateStore.open(path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="did not write"):
        StateStore.open(path)


def test_count_and_forget_by_start_time(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        hours = [(i, NOW - timedelta(hours=i)) for i in range(1, 11)]
        store.commit(3, emitted={"completed": hours, "started": hours[:2]})
        last_four_hours = Window(NOW - timedelta(hours=4), NOW)
        assert store.count_emitted(3, "completed", last_four_hours) == 4
        assert store.count_emitted(3, "started", last_four_hours) == 2
        edge = NOW - timedelta(hours=5, minutes=30)
        assert store.count_before(3, "completed", edge) == 5
        store.commit(3, forget=Forget(("completed",), edge))
        assert store.count_before(3, "completed", edge) == 0
        assert store.already_emitted(3, "completed", range(11)) == {1, 2, 3, 4, 5}
        assert store.already_emitted(3, "started", range(11)) == {1, 2}
    finally:
        store.close()


def test_reset_of_one_stream_keeps_the_partners_others(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        commit_old_style(store, 1, "completed", Cursor(NOW), [(5, NOW)])
        commit_old_style(store, 1, "started", Cursor(NOW), [(5, NOW)])
        assert store.reset(partner_id=1, stream="started") == 1
        assert store.cursor(1, "started") is None
        assert store.cursor(1, "completed") == Cursor(NOW)
        assert store.already_emitted(1, "completed", [5]) == {5}
        assert store.already_emitted(1, "started", [5]) == set()
    finally:
        store.close()


def test_a_commit_that_fails_halfway_leaves_nothing_behind(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        commit_old_style(store, 1, "completed", Cursor(NOW), [(1, NOW)])

        class Unwritable(datetime):
            def astimezone(self, tz: Any = None) -> datetime:
                raise RuntimeError("the disk vanished")

        broken = Unwritable(2026, 1, 2, 4, tzinfo=UTC)
        with pytest.raises(RuntimeError):
            store.commit(
                1, emitted={"completed": [(2, NOW)]}, cursors={"completed": Cursor(broken)}
            )
        assert store.already_emitted(1, "completed", [1, 2]) == {1}, "the ids were committed"
        assert store.cursor(1, "completed") == Cursor(NOW)
    finally:
        store.close()


def test_a_write_the_disk_refuses_is_weather_and_the_next_one_goes_through(
    tmp_path: Path,
) -> None:
    """A full disk (here a file-size limit: every write past the first byte fails) leaves the
    file as it was and says which file; once there is room the same commit goes through."""
    path = tmp_path / "s.db"
    store = StateStore.open(path)
    later = NOW + timedelta(minutes=1)
    try:
        commit_old_style(store, 1, "completed", Cursor(NOW), [(1, NOW)])
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            with pytest.raises(StateUnwritable) as caught:
                commit_old_style(store, 1, "completed", Cursor(later), [(2, later)])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        assert str(caught.value).startswith(f"state file {path} cannot be written (")
        assert store.write_problem == str(caught.value)
        assert store.already_emitted(1, "completed", [1, 2]) == {1}
        assert store.cursor(1, "completed") == Cursor(NOW)
        commit_old_style(store, 1, "completed", Cursor(later), [(2, later)])
        assert store.write_problem is None
        assert store.already_emitted(1, "completed", [1, 2]) == {1, 2}
        assert store.cursor(1, "completed") == Cursor(later)
    finally:
        store.close()
    reopened = StateStore.open(path)
    try:
        assert reopened.cursor(1, "completed") == Cursor(later)
    finally:
        reopened.close()


def test_a_file_whose_pages_are_damaged_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    commit_old_style(store, 1, "completed", Cursor(NOW), [(i, NOW) for i in range(5000)])
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, page):
        data[offset + 100 : offset + 200] = b"\xff" * 100  # inside b-tree pages, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="damaged"):
        StateStore.open(path)


# What enters from disk, cursor by cursor and table by table


def stored(tmp_path: Path, statement: str, *params: Any) -> Path:
    """A state file with one scan in progress, then changed by ``statement``."""
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    window = Window(NOW, NOW + timedelta(hours=1))
    store.commit(3, cursors={"completed": Cursor(NOW, window, 9)})
    store.close()
    db = sqlite3.connect(path)
    db.execute(statement, params)
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize(
    ("statement", "params", "problem"),
    [
        ("UPDATE cursors SET scanned_until = X'3030'", (), "scanned_until is not a date"),
        ("UPDATE cursors SET scanned_until = ?", ("2026-01-02T03:04:05",), "a date without a zone"),
        ("UPDATE cursors SET scan_start = NULL", (), "a scan in progress without its window)"),
        (
            "UPDATE cursors SET scan_start = NULL, scan_end = NULL",
            (),
            "a scan in progress without its window)",
        ),
        ("UPDATE cursors SET scan_token = 'x9'", (), "scan_token is not an integer"),
        ("UPDATE cursors SET scan_token = NULL", (), "scan_token is not an integer"),
        ("UPDATE cursors SET scan_token = 1.5", (), "scan_token is not an integer"),
        ("UPDATE cursors SET scan_end = ?", ("2026-01-02T00:00:00",), "a date without a zone"),
        # An older version's `state reset --to 0001-01-01`, or a hand edit: every tick would
        # fail to compute where to re-read from (the cursor less the overlap).
        (
            "UPDATE cursors SET scanned_until = ?",
            ("0001-01-01T00:00:00+00:00",),
            "scanned_until 0001-01-01T00:00:00+00:00 is before 2000-01-01",
        ),
        (
            "UPDATE cursors SET scanned_until = ?",
            ("1999-12-31T23:59:59+00:00",),
            "scanned_until 1999-12-31T23:59:59+00:00 is before 2000-01-01",
        ),
        # Year 1 east of UTC is year 0 in UTC: no date at all.
        (
            "UPDATE cursors SET scan_start = ?",
            ("0001-01-01T00:00:00+01:00",),
            "not a date in UTC: '0001-01-01T00:00:00+01:00'",
        ),
    ],
)
def test_a_cursor_that_does_not_read_back_is_refused_naming_it(
    tmp_path: Path, statement: str, params: tuple[Any, ...], problem: str
) -> None:
    path = stored(tmp_path, statement, *params)
    for opener in (StateStore.open, StateStore.read_only):
        with pytest.raises(StateError) as caught:
            opener(path)
        assert str(caught.value).startswith(f"state file {path} is damaged (the cursor of ")
        assert f"partner 3 completed: {problem}" in str(caught.value)


def test_a_cursor_stored_with_another_zone_reads_back_in_utc(tmp_path: Path) -> None:
    path = stored(tmp_path, "UPDATE cursors SET scanned_until = ?", "2026-01-02T04:04:05+01:00")
    store = StateStore.open(path)
    try:
        cursor = store.cursor(3, "completed")
        assert cursor is not None and cursor.scanned_until == NOW
        assert cursor.scanned_until.utcoffset() == timedelta(0)
        assert cursor.window == Window(NOW, NOW + timedelta(hours=1)) and cursor.next_id == 9
    finally:
        store.close()


def test_a_cursor_at_the_earliest_date_reads_back(tmp_path: Path) -> None:
    path = stored(tmp_path, "UPDATE cursors SET scanned_until = ?", "2000-01-01T00:00:00+00:00")
    store = StateStore.open(path)
    try:
        cursor = store.cursor(3, "completed")
        assert cursor is not None and cursor.scanned_until == datetime(2000, 1, 1, tzinfo=UTC)
    finally:
        store.close()


def test_a_finished_cursor_reads_back_without_a_window(tmp_path: Path) -> None:
    path = stored(
        tmp_path, "UPDATE cursors SET scan_start = NULL, scan_end = NULL, scan_token = NULL"
    )
    store = StateStore.open(path)
    try:
        assert store.cursor(3, "completed") == Cursor(NOW)
        assert store.cursor(3, "started") is None and store.cursor(4, "completed") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("ALTER TABLE emitted RENAME COLUMN start_time TO started", "table 'emitted'"),
        ("ALTER TABLE meta ADD COLUMN extra TEXT", "table 'meta'"),
        ("DROP TABLE cursors", "table 'cursors'"),
        ("UPDATE meta SET value = '' WHERE key = 'schema_version'", "schema version"),
        ("UPDATE meta SET value = '-1' WHERE key = 'schema_version'", "schema version"),
        ("DELETE FROM meta WHERE key = 'schema_version'", "schema version None"),
        ("PRAGMA application_id = 7", "did not write"),
    ],
)
def test_a_file_not_as_written_is_refused(tmp_path: Path, statement: str, problem: str) -> None:
    path = stored(tmp_path, statement)
    for opener in (StateStore.open, StateStore.read_only):
        with pytest.raises(StateError, match="state file") as caught:
            opener(path)
        assert problem in str(caught.value)


def test_the_schema_version_this_release_wrote_is_accepted(tmp_path: Path) -> None:
    path = stored(tmp_path, "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = StateStore.open(path)
    store.close()


def test_a_folder_or_an_empty_file_or_a_path_through_a_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    through = tmp_path / "empty" / "state.sqlite3"
    for path, problem in (
        (folder, "is not a regular file"),
        (empty, "is empty"),
        (through, "cannot be read"),
    ):
        for opener in (StateStore.open, StateStore.read_only):
            with pytest.raises(StateError, match=problem):
                opener(path)
    assert empty.read_bytes() == b""


def test_a_new_file_is_made_whole_with_nothing_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.sqlite3"
    store = StateStore.open(path)
    try:
        meta = store.snapshot()["meta"]
        assert meta["schema_version"] == "1"
        assert set(meta) == {"schema_version", "created_at", "opened_at"}
        assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    finally:
        store.close()
    leftovers = [p.name for p in path.parent.iterdir() if not p.name.startswith("state.sqlite3")]
    assert leftovers == []
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x476C506F
    finally:
        db.close()


def test_a_file_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot be"):
        StateStore.open(blocker / "sub" / "state.sqlite3")


def test_an_existing_file_is_made_private_and_its_opening_noted(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    path.chmod(0o644)
    store = StateStore.open(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "opened_at" in store.snapshot()["meta"]
        # Write-ahead logging: a reader beside the writer sees the last commit.
        store.commit(1, cursors={"completed": Cursor(NOW)})
        reader = StateStore.read_only(path)
        try:
            assert reader.cursor(1, "completed") == Cursor(NOW)
        finally:
            reader.close()
        assert path.with_name(path.name + "-wal").exists()
    finally:
        store.close()


def test_closing_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    again = StateStore.open(path)
    again.close()


def test_a_reader_never_writes_and_needs_the_file(tmp_path: Path) -> None:
    with pytest.raises(StateError) as caught:
        StateStore.read_only(tmp_path / "missing.sqlite3")
    assert str(caught.value) == (
        f"state file {tmp_path / 'missing.sqlite3'} does not exist: "
        "the daemon creates it on its first start"
    )
    assert not (tmp_path / "missing.sqlite3").exists()
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    reader = StateStore.read_only(path)
    try:
        assert reader.snapshot()["path"] == str(path)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.commit(1, cursors={"completed": Cursor(NOW)})
    finally:
        reader.close()
    # It takes no lock: the daemon can open the file while a reader holds it.
    reader = StateStore.read_only(path)
    try:
        StateStore.open(path).close()
    finally:
        reader.close()


def test_a_reader_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StateError) as caught:
        StateStore.read_only(path)
    assert str(caught.value).startswith(f"state file {path} is damaged or not a state file (")
    assert path.read_bytes() == b"not sqlite at all" * 100


def test_partners_are_those_with_a_cursor_on_the_stream(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        for partner in (9, 2, 5):
            store.commit(partner, cursors={"completed": Cursor(NOW)})
        store.commit(7, cursors={"started": Cursor(NOW)})
        assert store.partners("completed") == [2, 5, 9]
        assert store.partners("started") == [7]
        assert store.partners("counts") == []
    finally:
        store.close()


def test_already_emitted_is_per_partner_and_stream(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        store.commit(1, emitted={"completed": [(5, NOW)], "started": [(6, NOW)]})
        store.commit(2, emitted={"completed": [(7, NOW)]})
        assert store.already_emitted(1, "completed", [5, 6, 7]) == {5}
        assert store.already_emitted(1, "started", [5, 6, 7]) == {6}
        assert store.already_emitted(2, "completed", [5, 6, 7]) == {7}
        assert store.already_emitted(1, "completed", []) == set()
        assert store.already_emitted(1, "completed", iter([5])) == {5}
    finally:
        store.close()


def test_counts_by_start_take_the_start_and_leave_the_end(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    hour = timedelta(hours=1)
    try:
        store.commit(
            1,
            emitted={
                "completed": [(1, NOW - hour), (2, NOW), (3, NOW + hour)],
                "started": [(4, NOW)],
            },
        )
        store.commit(2, emitted={"completed": [(5, NOW)]})
        assert store.count_emitted(1, "completed", Window(NOW, NOW + hour)) == 1
        assert store.count_emitted(1, "completed", Window(NOW - hour, NOW + hour)) == 2
        assert store.count_before(1, "completed", NOW) == 1
        assert store.count_before(1, "completed", NOW + hour) == 2
        assert store.count_before(1, "started", NOW + hour) == 1
    finally:
        store.close()


def test_forget_drops_only_older_ids_of_its_streams_and_partner(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    hour = timedelta(hours=1)
    try:
        ids = [(1, NOW - hour), (2, NOW)]
        store.commit(1, emitted={"completed": ids, "started": ids})
        store.commit(2, emitted={"completed": ids})
        store.commit(1, emitted={"completed": []}, forget=Forget(("completed",), NOW))
        assert store.already_emitted(1, "completed", [1, 2]) == {2}
        assert store.already_emitted(1, "started", [1, 2]) == {1, 2}
        assert store.already_emitted(2, "completed", [1, 2]) == {1, 2}
    finally:
        store.close()


def test_the_snapshot_describes_every_cursor(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    hour = timedelta(hours=1)
    window = Window(NOW, NOW + hour)
    try:
        store.commit(
            2,
            cursors={"completed": Cursor(NOW - hour, window, 12), "started": Cursor(NOW)},
            emitted={"completed": [(1, NOW - hour), (2, NOW + hour), (3, NOW)]},
        )
        shown = store.snapshot(now=NOW + timedelta(seconds=1.5, microseconds=432))
        assert shown["path"] == str(tmp_path / "s.db")
        assert shown["streams"] == [
            {
                "partnerId": 2,
                "stream": "completed",
                "scannedUntil": "2026-01-02T02:04:05+00:00",
                "scanInProgress": {
                    "windowStart": "2026-01-02T03:04:05+00:00",
                    "windowEnd": "2026-01-02T04:04:05+00:00",
                    "nextId": 12,
                },
                "emittedIds": 3,
                "emittedStartTimes": {
                    "oldest": "2026-01-02T02:04:05+00:00",
                    "newest": "2026-01-02T04:04:05+00:00",
                },
                "lagSeconds": 3601.5,
            },
            {
                "partnerId": 2,
                "stream": "started",
                "scannedUntil": "2026-01-02T03:04:05+00:00",
                "scanInProgress": None,
                "emittedIds": 0,
                "emittedStartTimes": None,
                "lagSeconds": 1.5,
            },
        ]
        assert "lagSeconds" not in store.snapshot()["streams"][0]
        # A snapshot leaves no transaction open: the next commit goes through.
        store.commit(2, cursors={"started": Cursor(NOW + hour)})
        assert store.cursor(2, "started") == Cursor(NOW + hour)
    finally:
        store.close()


def test_a_file_nobody_can_use_is_moved_aside_with_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"damaged")
    path.with_name("state.sqlite3-wal").write_bytes(b"wal")
    path.with_name("state.sqlite3-shm").write_bytes(b"shm")
    target = move_aside(path)
    assert not path.exists() and not path.with_name("state.sqlite3-wal").exists()
    assert target.parent == tmp_path and target.name.startswith("state.sqlite3.damaged-")
    stamp = target.name.removeprefix("state.sqlite3.damaged-")
    assert datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    assert target.read_bytes() == b"damaged"
    assert target.with_name(target.name + "-wal").read_bytes() == b"wal"
    assert target.with_name(target.name + "-shm").read_bytes() == b"shm"
    assert not path.with_name("state.sqlite3-shm").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
        (" 2026-01-02T03:04:05Z ", NOW),
        ("2026-01-02T04:04:05+01:00", NOW),
        ("2026-01-02T03:04:05", NOW),
    ],
)
def test_a_command_line_date_is_utc(text: str, expected: datetime) -> None:
    parsed = parse_cli_date(text, 300.0)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


def test_a_command_line_date_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ISO date or date-time: 'soon'"):
        parse_cli_date("soon", 300.0)


@pytest.mark.parametrize(
    "text", ["0001-01-01", "0001-01-01T00:00:00+01:00", "1999-12-31T23:59:59Z", "1999-12-31"]
)
def test_a_command_line_date_older_than_the_service_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"is before 2000-01-01, older than the Glance Activity"):
        parse_cli_date(text, 300.0)
    assert parse_cli_date("2000-01-01", 300.0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert parse_cli_date("2000-01-01T01:00:00+01:00", 300.0) == datetime(2000, 1, 1, tzinfo=UTC)


def test_a_command_line_date_beyond_the_host_clock_and_the_tolerance_is_refused() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=1)
    assert parse_cli_date(soon.isoformat(), 300.0) == soon
    with pytest.raises(ValueError, match=r"lies in the future \(after .*clock_tolerance\)$"):
        parse_cli_date((datetime.now(UTC) + timedelta(minutes=10)).isoformat(), 300.0)
    # 9999 west of UTC is no date in UTC: refused, not an OverflowError.
    with pytest.raises(ValueError, match=r"^9999-12-31T23:59:59-01:00 lies in the future"):
        parse_cli_date("9999-12-31T23:59:59-01:00", 300.0)


def test_a_second_opening_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    try:
        with pytest.raises(StateError) as caught:
            StateStore.open(path)
        assert str(caught.value) == (
            f"state file {path} is locked by another glance-poller process: "
            "stop that process, or give this one its own state.path"
        )
        # The refused opening left the holder's lock and file alone.
        store.commit(1, cursors={"completed": Cursor(NOW)})
    finally:
        store.close()
    StateStore.open(path).close()


def test_every_refusal_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    # A name the file system takes, but not with the temporary file's prefix and suffix.
    unmakeable = tmp_path / ("s" * 250)
    foreign = tmp_path / "foreign.sqlite3"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    for path, problem in (
        (empty, "is empty"),
        (empty / "state.sqlite3", "cannot be read: Not a directory"),
        (unmakeable, "cannot be created: "),
        (foreign, "did not write"),
    ):
        with pytest.raises(StateError) as caught:
            StateStore.open(path)
        assert str(caught.value).startswith(f"state file {path} ")
        assert problem in str(caught.value)


def test_a_commit_with_nothing_for_one_stream_still_records_the_others(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.db")
    try:
        store.commit(1, emitted={"completed": [], "started": [(4, NOW)]})
        assert store.already_emitted(1, "started", [4]) == {4}
    finally:
        store.close()


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time zone is not UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_dates_are_utc_whatever_the_hosts_zone(tmp_path: Path) -> None:
    path = stored(tmp_path, "UPDATE cursors SET scanned_until = ?", "2026-01-02T04:04:05+01:00")
    store = StateStore.open(path)
    try:
        cursor = store.cursor(3, "completed")
        assert cursor is not None and cursor.scanned_until.utcoffset() == timedelta(0)
        # What `state show` prints, and what the file keeps, is written in UTC too.
        store.commit(3, cursors={"started": Cursor(NOW)}, emitted={"started": [(1, NOW)]})
        shown = store.snapshot()
        (started,) = [s for s in shown["streams"] if s["stream"] == "started"]
        assert started["scannedUntil"] == "2026-01-02T03:04:05+00:00"
        assert started["emittedStartTimes"]["oldest"] == "2026-01-02T03:04:05+00:00"
        assert str(shown["meta"]["opened_at"]).endswith("+00:00")
    finally:
        store.close()
    for text in ("2026-01-02T03:04:05", "2026-01-02T04:04:05+01:00"):
        parsed = parse_cli_date(text, 300.0)
        assert parsed == NOW and parsed.utcoffset() == timedelta(0)
    path.write_bytes(b"damaged")
    target = move_aside(path)
    stamp = datetime.strptime(target.name.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ")
    assert abs(stamp.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)


def test_each_refusal_says_what_is_wrong_and_the_way_out(tmp_path: Path) -> None:
    recover = StateError.RECOVER
    folder = tmp_path / "folder"
    folder.mkdir()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    expected = {
        folder: f"state file {folder} is not a regular file: give state.path a file's name",
        empty: f"state file {empty} is empty (zero bytes): it is damaged or was never "
        f"written: {recover}",
    }
    cases = {
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'": "was written by a newer "
        "glance-poller (state schema 2; this version reads up to 1): run the newer "
        "glance-poller, or restore a backup of the state file",
        "PRAGMA application_id = 7": "is an SQLite file that glance-poller did not write: "
        + recover,
        "DROP TABLE emitted": f"is damaged (table 'emitted' is missing or altered): {recover}",
        "UPDATE meta SET value = 'x' WHERE key = 'schema_version'": "is damaged (schema "
        f"version 'x'): {recover}",
    }
    for number, (statement, problem) in enumerate(cases.items()):
        folder_of_case = tmp_path / str(number)
        folder_of_case.mkdir()
        path = stored(folder_of_case, statement)
        expected[path] = f"state file {path} {problem}"
    for path, message in expected.items():
        for opener in (StateStore.open, StateStore.read_only):
            with pytest.raises(StateError) as caught:
                opener(path)
            assert str(caught.value) == message


# Refusals the tests, run as root, cannot arrange on disk: the system calls fail on demand


def test_a_file_that_cannot_be_opened_or_read_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    recover = StateError.RECOVER

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patched:
        patched.setattr(os, "open", denied)
        with pytest.raises(StateError) as caught:
            StateStore.open(path)
    assert str(caught.value) == f"state file {path} cannot be opened: Permission denied: {recover}"
    assert caught.value.exit_code == 4

    def unopenable(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    for opener in (StateStore.open, StateStore.read_only):
        with monkeypatch.context() as patched:
            patched.setattr(sqlite3, "connect", unopenable)
            with pytest.raises(StateError) as caught:
                opener(path)
        assert str(caught.value) == (
            f"state file {path} cannot be read (unable to open database file): {recover}"
        )
        assert caught.value.exit_code == 4
    # The refused opening let go of the lock it had taken: the next one gets it.
    StateStore.open(path).close()


def test_a_file_that_cannot_be_made_private_is_still_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's file (a volume restored by hand): chmod fails, the daemon still runs."""
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()

    def not_ours(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", not_ours)
    store = StateStore.open(path)
    try:
        store.commit(1, cursors={"completed": Cursor(NOW)})
        assert store.cursor(1, "completed") == Cursor(NOW)
    finally:
        store.close()


def test_a_file_failing_the_integrity_check_is_refused_naming_it(tmp_path: Path) -> None:
    """Readable pages, but a row SQLite's own check rejects: a NULL where the schema says
    NOT NULL (written through an altered schema, then the schema put back)."""
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()

    def schema_of_meta(change: Callable[[str], str]) -> str:
        db = sqlite3.connect(path)
        db.execute("PRAGMA writable_schema = ON")
        (schema,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'meta'").fetchone()
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'meta'", (change(schema),))
        db.commit()
        db.close()
        return str(schema)

    written = schema_of_meta(lambda schema: schema.replace("NOT NULL", ""))
    db = sqlite3.connect(path)
    db.execute("INSERT INTO meta VALUES ('extra', NULL)")
    db.commit()
    db.close()
    schema_of_meta(lambda _: written)
    before = path.read_bytes()
    for opener in (StateStore.open, StateStore.read_only):
        with pytest.raises(StateError) as caught:
            opener(path)
        assert str(caught.value) == (
            f"state file {path} is damaged (integrity check: NULL value in meta.value): "
            f"{StateError.RECOVER}"
        )
    assert path.read_bytes() == before


def test_a_commit_is_timed_in_its_histogram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore.open(tmp_path / "s.db")
    name = "glance_poller_state_commit_seconds"
    try:
        before = metrics.REGISTRY.get_sample_value(f"{name}_sum") or 0.0
        count = metrics.REGISTRY.get_sample_value(f"{name}_count") or 0.0
        ticks = iter([1000.0, 1000.25])
        monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
        store.commit(1, cursors={"completed": Cursor(NOW)})
        monkeypatch.undo()
        assert metrics.REGISTRY.get_sample_value(f"{name}_sum") == before + 0.25
        assert metrics.REGISTRY.get_sample_value(f"{name}_count") == count + 1
    finally:
        store.close()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_file_removed_or_replaced_under_the_daemon_refuses_the_next_commit(
    tmp_path: Path, how: str
) -> None:
    """Found by an adversary: with the file deleted, commits went on into the unlinked file
    (ready, no word said), and a second daemon on the same path was not refused: its lock is
    on the file, and the path no longer named it."""
    path = tmp_path / "state.sqlite3"
    store = StateStore.open(path)
    try:
        commit_old_style(store, 7, "completed", Cursor(NOW), [(1, NOW)])
        for leftover in tmp_path.glob("state.sqlite3*"):
            leftover.unlink()
        if how == "replaced":
            StateStore.open(path).close()
        with pytest.raises(StateError) as raised:
            commit_old_style(store, 7, "completed", Cursor(NOW + timedelta(seconds=5)), [(2, NOW)])
        assert str(raised.value) == (
            f"state file {path} was {how} while the daemon ran: nothing more is written to it; "
            "restore the file, or start the daemon again, which begins from what state.path "
            "holds then"
        )
        assert raised.value.exit_code == 4
    finally:
        store.close()
