"""What is on disk enters through one check: refused files stay untouched, and the way out
(``state reset`` moving the file aside, ``state show`` saying what is wrong) always works."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from poller.cursor import Cursor
from poller.errors import StateError
from poller.state import StateStore
from poller.window import Window
from tests.unit.test_cli import run

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def made(path: Path) -> Path:
    store = StateStore.open(path)
    store.commit(
        1,
        cursors={"completed": Cursor(NOW, Window(NOW, NOW + timedelta(hours=1)), 9)},
        emitted={"completed": [(5, NOW)]},
    )
    store.close()
    os.chmod(path, 0o640)
    return path


def sql(statement: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        db = sqlite3.connect(path)
        db.execute(statement)
        db.commit()
        db.close()

    return damage


DAMAGES = {
    "zero bytes": lambda path: path.write_bytes(b""),
    "version not a number": sql("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'"),
    "version zero": sql("UPDATE meta SET value = '0' WHERE key = 'schema_version'"),
    "an emitted id not a number": sql("UPDATE emitted SET session_id = 'abc'"),
    "an emitted start not a number": sql("UPDATE emitted SET start_time = 'yesterday'"),
    "a cursor's partner not a number": sql("UPDATE cursors SET partner_id = 'one'"),
    "version row missing": sql("DELETE FROM meta WHERE key = 'schema_version'"),
    "cursors table dropped": sql("DROP TABLE cursors"),
    "scanned_until unparsable": sql("UPDATE cursors SET scanned_until = 'soon'"),
    "scan token out of range": sql("UPDATE cursors SET scan_token = -5"),
    "window half missing": sql("UPDATE cursors SET scan_end = NULL"),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_file_is_refused_and_not_touched(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = made(tmp_path / "state.sqlite3")
    damage(path)
    before = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    with pytest.raises(StateError) as caught:
        StateStore.open(path)
    assert caught.value.exit_code == 4 and str(path) in str(caught.value)
    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == before


def test_a_value_that_is_not_an_integer_is_named_with_its_column(tmp_path: Path) -> None:
    path = made(tmp_path / "state.sqlite3")
    sql("UPDATE emitted SET session_id = 'abc'")(path)
    with pytest.raises(StateError) as caught:
        StateStore.open(path)
    assert str(caught.value) == (
        f"state file {path} is damaged (emitted.session_id holds 'abc', not an integer): "
        f"{StateError.RECOVER}"
    )


WAYS_OUT = ("zero bytes", "version not a number", "scanned_until unparsable")


@pytest.mark.parametrize("damage", [DAMAGES[k] for k in WAYS_OUT], ids=WAYS_OUT)
def test_the_daemon_exits_4_and_the_way_out_works(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = made(tmp_path / "state.sqlite3")
    damage(path)
    env = {
        "GLANCE_PARTNER_ID": "1",
        "GLANCE_API_KEY": "key-123456",
        "POLLER_STATE_PATH": str(path),
        "GLANCE_BASE_URL": "http://127.0.0.1:9",
    }
    daemon = run("run", "--once", env=env)
    assert daemon.returncode == 4, daemon.stdout + daemon.stderr
    assert "Traceback" not in daemon.stdout + daemon.stderr
    shown = run("state", "show", env=env)
    assert shown.returncode == 4 and str(path) in shown.stdout + shown.stderr
    reset = run("state", "reset", "--yes", env=env)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    (kept,) = tmp_path.glob("state.sqlite3.damaged-*")
    assert str(kept) in reset.stdout and not path.exists()
    StateStore.open(path).close()  # a fresh start


def test_a_folder_given_as_the_state_file_is_refused_and_not_touched(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    with pytest.raises(StateError, match="not a regular file"):
        StateStore.open(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_new_file_is_never_left_empty(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.sqlite3"
    StateStore.open(path).close()
    assert path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["state.sqlite3"]


def test_state_show_reads_a_snapshot_while_the_daemon_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    held = StateStore.open(path)
    try:
        held.commit(7, cursors={"completed": Cursor(NOW)}, emitted={"completed": [(1, NOW)]})
        before = path.read_bytes()
        shown = run("state", "show", env={"POLLER_STATE_PATH": str(path)})
        assert shown.returncode == 0, shown.stderr
        assert '"partnerId": 7' in shown.stdout and '"lagSeconds"' in shown.stdout
        assert path.read_bytes() == before, "state show wrote to the file"
        reset = run("state", "reset", "--yes", env={"POLLER_STATE_PATH": str(path)})
        assert reset.returncode == 4 and "locked" in reset.stdout + reset.stderr
    finally:
        held.close()


def test_state_reset_to_refuses_a_date_in_the_future(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore.open(path).close()
    env = {"POLLER_STATE_PATH": str(path), "GLANCE_PARTNER_ID": "3"}
    refused = run("state", "reset", "--to", "2099-01-01", "--yes", env=env)
    assert refused.returncode == 2 and "future" in refused.stderr
    store = StateStore.open(path)
    try:
        assert store.cursor(3, "completed") is None
    finally:
        store.close()
