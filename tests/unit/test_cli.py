"""The command line: exit codes and messages for what fails before any connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[glance]\nbase_url = "not a url"\n[completed]\ninterval = -1\n[mystery]\nx = 1\n'
        "[[partners]]\nid = 0\n"
    )
    # An unreachable broker and upstream: exit 2 must come before any attempt to connect.
    result = run("run", "--config", str(config), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    assert result.returncode == 2
    for key in ("glance.base_url", "completed.interval", "mystery", "partners[0].id"):
        assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_no_partner_exits_2(tmp_path: Path) -> None:
    result = run("run", env={"POLLER_STATE_PATH": str(tmp_path / "s.db")})
    assert result.returncode == 2
    assert "partners: no partner configured" in result.stderr


def test_unusable_state_exits_4_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    state.write_bytes(b"\x00garbage" * 512)
    result = run(
        "run",
        env={
            "GLANCE_PARTNER_ID": "1",
            "GLANCE_API_KEY": "k",
            "POLLER_STATE_PATH": str(state),
            "GLANCE_BASE_URL": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 4
    assert str(state) in result.stdout and "glance-poller state" in result.stdout
    assert state.read_bytes() == b"\x00garbage" * 512


def test_state_show_and_reset(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from poller.state import Cursor, StateStore

    state = tmp_path / "state.sqlite3"
    store = StateStore.open(state)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    store.commit(5, cursors={"completed": Cursor(moment)}, emitted={"completed": [(1, moment)]})

    store.close()
    env = {"POLLER_STATE_PATH": str(state)}
    shown = run("state", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert '"partnerId": 5' in shown.stdout and '"emittedIds": 1' in shown.stdout
    refused = run("state", "reset", env=env)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    reset = run("state", "reset", "--yes", env=env)
    assert reset.returncode == 0 and "reset 1 cursor(s)" in reset.stdout
    assert '"streams": []' in run("state", "show", env=env).stdout
    config = tmp_path / "poller.toml"
    config.write_text(f'[state]\npath = "{state}"\n')
    assert '"streams": []' in run("state", "show", "--config", str(config)).stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["emulator", "--help"],
        ["state", "--help"],
        ["tail", "--help"],
    ],
)
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0 and "usage: glance-poller" in result.stdout
