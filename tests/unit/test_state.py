"""The state file: commits, resumption, the lock, and refusing what it cannot trust."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from poller.cursor import Cursor
from poller.errors import StateError
from poller.state import Forget, StateStore
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
        rows = store._db.execute("SELECT session_id, start_time FROM emitted ORDER BY 1")
        assert rows.fetchall() == [(i, int(NOW.timestamp())) for i in ids]  # the first start
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
