"""The command line: exit codes and messages for what fails before any connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    max_memory: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """The command line as a process; ``max_memory`` caps its address space (bytes), for
    what could otherwise eat the machine's memory."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }

    def cap_memory() -> None:
        import resource

        assert max_memory is not None
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))

    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        cwd=cwd,
        timeout=60,
        check=False,
        preexec_fn=None if max_memory is None else cap_memory,
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


@pytest.mark.parametrize("command", [["run"], ["check", "--offline"], ["state", "show"]])
def test_a_folder_given_as_the_configuration_exits_2_naming_it(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(*command, "--config", str(tmp_path), env={"GLANCE_PARTNER_ID": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"--config: cannot read {tmp_path}: Is a directory" in output
    assert "Traceback" not in output


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("what", ["--config", "GLANCE_API_KEY_FILE", "api_key_file"])
@pytest.mark.parametrize(("command", "code"), [(["run"], 2), (["check", "--offline"], 2)])
def test_a_file_that_never_ends_is_a_configuration_problem(
    tmp_path: Path, what: str, command: list[str], code: int
) -> None:
    """Found by an adversary: /dev/zero as the configuration or a key file was read without
    limit (23 GB, then OOM). Run under a 512 MiB address-space cap, so that without the
    file's own cap this test fails (MemoryError) instead of eating the machine's memory."""
    env = {"GLANCE_PARTNER_ID": "1", "GLANCE_API_KEY": "unit-test-key-4b1d"}
    config = tmp_path / "poller.toml"
    if what == "--config":
        config = Path("/dev/zero")
        key = "--config"
    elif what == "GLANCE_API_KEY_FILE":
        config.write_text("")
        env["GLANCE_API_KEY_FILE"] = "/dev/zero"
        key = "partners[0].api_key_file"
    else:
        config.write_text('[[partners]]\nid = 1\napi_key_file = "/dev/zero"\n')
        env.pop("GLANCE_PARTNER_ID")
        key = "partners[0].api_key_file"
    result = run(*command, "--config", str(config), env=env, max_memory=512 << 20)
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert f"{key}: /dev/zero is larger than " in output and "Traceback" not in output
    assert "\x00" not in output and "\\x00" not in output and len(output) < 4000


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

    from poller.cursor import Cursor
    from poller.state import StateStore

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


def _daemon_env(state: Path) -> dict[str, str]:
    # Nothing listens at these addresses: exit 4 must come before any connection.
    return {
        "GLANCE_PARTNER_ID": "1",
        "GLANCE_API_KEY": "unit-test-key-4b1d",
        "POLLER_STATE_PATH": str(state),
        "GLANCE_BASE_URL": "http://127.0.0.1:9",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }


def _valid_state(path: Path) -> None:
    from datetime import UTC, datetime

    from poller.cursor import Cursor
    from poller.state import StateStore

    store = StateStore.open(path)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [(i, moment) for i in range(1, 5000)]
    store.commit(1, cursors={"completed": Cursor(moment)}, emitted={"completed": ids})
    store.close()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _newer(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    db.commit()
    db.close()


def _scribble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))


def _year_one(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE cursors SET scanned_until = '0001-01-01T00:00:00+00:00'")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_truncate, "damaged"),
        (_scribble, "damaged"),
        (_newer, "newer glance-poller"),
        (_year_one, "is before 2000-01-01"),
    ],
)
def test_an_unusable_state_file_stops_the_daemon_with_exit_4(
    tmp_path: Path, damage: object, says: str
) -> None:
    state = tmp_path / "state.sqlite3"
    _valid_state(state)
    damage(state)  # type: ignore[operator]
    before = state.read_bytes()
    result = run("run", env=_daemon_env(state))
    assert result.returncode == 4, result.stdout + result.stderr
    assert str(state) in result.stdout and says in result.stdout
    assert "state show" in result.stdout or "newer glance-poller" in result.stdout
    assert state.read_bytes() == before, "the state file must never be overwritten"


def test_a_locked_state_file_stops_a_second_daemon_with_exit_4(tmp_path: Path) -> None:
    from poller.state import StateStore

    state = tmp_path / "state.sqlite3"
    holder = StateStore.open(state)
    try:
        result = run("run", env=_daemon_env(state))
        assert result.returncode == 4
        assert "locked by another glance-poller process" in result.stdout
        assert str(state) in result.stdout
    finally:
        holder.close()


def test_every_configuration_problem_at_once_before_any_connection(tmp_path: Path) -> None:
    config = tmp_path / "poller.toml"
    config.write_text(
        "[glance]\n"
        'base_url = "glance.net/no-scheme"\n'
        "[completed]\n"
        "interval = -5\n"
        "[kafka]\n"
        'bootstrap = "typo-for-bootstrap_servers"\n'
        "[[partners]]\n"
        'api_key_file = "/nonexistent/glance.key"\n'
        "[[partners]]\n"
        "id = 2\n"
        f'api_key_file = "{tmp_path / "missing.key"}"\n'
    )
    result = run("run", "--config", str(config), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    assert result.returncode == 2
    problems = [
        line.strip() for line in result.stderr.splitlines() if line.strip().startswith("- ")
    ]
    keys = {line[2:].split(":", 1)[0] for line in problems}
    # A bad value elsewhere does not hide the partner whose key file cannot be read.
    assert keys == {
        "glance.base_url",
        "completed.interval",
        "kafka.bootstrap",
        "partners[0].id",
        "partners[1].api_key_file",
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("glance.max_window", '"99999999999999d"'),
        ("reconcile.horizon", '"99999999999999d"'),
        ("completed.start_lookback", "1e300"),
        ("completed.overlap", '"400d"'),
    ],
)
def test_durations_that_overflow_a_date_are_configuration_errors(
    tmp_path: Path, key: str, value: str
) -> None:
    section, name = key.split(".")
    config = tmp_path / "poller.toml"
    config.write_text(f"[{section}]\n{name} = {value}\n")
    result = run("run", "--once", "--config", str(config), env={"GLANCE_PARTNER_ID": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{key}:" in result.stderr and "Traceback" not in result.stderr
    # The missing key is listed beside it.
    assert "partners[0].api_key_env" in result.stderr


def test_state_reset_to_moves_the_completed_cursor(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    _valid_state(state)
    env = {"POLLER_STATE_PATH": str(state)}
    bad = run("state", "reset", "--to", "last tuesday", "--yes", env=env)
    assert bad.returncode == 2 and "not an ISO date" in bad.stderr
    moved = run("state", "reset", "--to", "2025-12-24T06:00:00", "--yes", env=env)
    assert moved.returncode == 0, moved.stderr
    assert "partner(s) 1 to 2025-12-24T06:00:00+00:00" in moved.stdout
    shown = run("state", "show", env=env).stdout
    assert '"scannedUntil": "2025-12-24T06:00:00+00:00"' in shown
    assert '"emittedIds": 4999' in shown, "moving the cursor keeps the emitted ids"


@pytest.mark.parametrize("date", ["0001-01-01", "1999-12-31T23:59:59Z"])
def test_state_reset_to_a_date_older_than_the_service_is_refused(tmp_path: Path, date: str) -> None:
    """Found by an adversary: `--to 0001-01-01` was accepted, and every completed tick then
    crashed computing where to re-read from (the cursor less the overlap)."""
    state = tmp_path / "state.sqlite3"
    _valid_state(state)
    env = {"POLLER_STATE_PATH": str(state)}
    refused = run("state", "reset", "--to", date, "--yes", env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--to: " in refused.stderr and "is before 2000-01-01" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert '"scannedUntil": "2026-01-01T00:00:00+00:00"' in run("state", "show", env=env).stdout
    earliest = run("state", "reset", "--to", "2000-01-01", "--yes", env=env)
    assert earliest.returncode == 0, earliest.stderr


def _days_ahead(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("since", "until", "says"),
    [
        ("2026-01-01", "9999-12-31T23:59:59Z", "--until: 9999-12-31T23:59:59+00:00 lies in the"),
        ("2026-01-01", "9999-12-31T23:59:59-01:00", "--until: 9999-12-31T23:59:59-01:00 lies in"),
        ("2026-01-01", "+2 days", "lies in the future"),
        ("0001-01-01", "2026-01-01", "--since: 0001-01-01T00:00:00+00:00 is before 2000-01-01"),
        ("1999-12-31T23:59:59Z", "2026-01-01", "--since: 1999-12-31T23:59:59+00:00 is before"),
    ],
)
def test_backfill_dates_outside_the_range_exit_2_naming_the_argument(
    tmp_path: Path, since: str, until: str, says: str
) -> None:
    """Found by an adversary: `--until 9999-12-31T23:59:59Z` crashed (OverflowError, exit 1)
    and `--since 0001-01-01` was taken. Refused before anything connects (nothing listens)."""
    until = _days_ahead(2) if until == "+2 days" else until
    result = run(
        "backfill", "--since", since, "--until", until, "--dry-run",
        env=_daemon_env(tmp_path / "state.sqlite3"),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert says in result.stderr and "Traceback" not in output


def test_state_reset_to_a_date_in_the_future_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    _valid_state(state)
    env = {"POLLER_STATE_PATH": str(state)}
    for date in (_days_ahead(2), "9999-12-31T23:59:59-01:00"):
        refused = run("state", "reset", "--to", date, "--yes", env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "--to: " in refused.stderr and "lies in the future" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert '"scannedUntil": "2026-01-01T00:00:00+00:00"' in run("state", "show", env=env).stdout


def test_sigterm_at_any_moment_of_the_start_exits_0(tmp_path: Path) -> None:
    """Every 50 ms of the start: the soak found a SIGTERM inside the start's garbage
    collection ending the daemon with a traceback and exit code 1."""
    import signal
    import time

    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    env = base | {
        "GLANCE_PARTNER_ID": "1",
        "GLANCE_API_KEY": "key-123456",
        "GLANCE_BASE_URL": "http://127.0.0.1:9",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "POLLER_STATE_PATH": str(tmp_path / "state.sqlite3"),
        "POLLER_SERVER__PORT": "0",
    }
    for step in range(12):
        delay = 0.05 * step
        daemon = subprocess.Popen(
            [sys.executable, "-m", "poller", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # From the moment the program catches SIGTERM (the interpreter's own start comes
        # first, and no program can have a handler before it): /proc says when.
        wait_for_handler(daemon.pid)
        time.sleep(delay)
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, f"SIGTERM after {delay:.2f}s: {output[-3000:]}"
        assert "Traceback" not in output, f"SIGTERM after {delay:.2f}s"


def wait_for_handler(pid: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (15 - 1)):  # SIGTERM is signal 15
            return
        time.sleep(0.002)
    raise AssertionError("the program never caught SIGTERM")


def test_version() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"glance-poller {version('glance-poller')}"


def test_progress_is_lines_on_a_terminal_without_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from poller import backfill_progress

    class SizelessTerminal:
        def isatty(self) -> bool:
            return True

        def fileno(self) -> int:
            return 2

    def no_size(fd: int = 0) -> os.terminal_size:
        raise OSError("Inappropriate ioctl for device")

    monkeypatch.setattr(backfill_progress.sys, "stderr", SizelessTerminal())
    monkeypatch.setattr(backfill_progress.os, "get_terminal_size", no_size)
    assert isinstance(backfill_progress.progress_for_stderr(), backfill_progress.LogProgress)
    monkeypatch.setattr(
        backfill_progress.os, "get_terminal_size", lambda fd=0: os.terminal_size((0, 0))
    )
    assert isinstance(backfill_progress.progress_for_stderr(), backfill_progress.LogProgress)
    monkeypatch.setattr(
        backfill_progress.os, "get_terminal_size", lambda fd=0: os.terminal_size((80, 24))
    )
    assert isinstance(backfill_progress.progress_for_stderr(), backfill_progress.BarProgress)


KEY = "Zk3f9QmA7pLx2RtW"
KAFKA_PASSWORD = "SuperSecretKafkaPw-77"


def _config_with_key_file(tmp_path: Path, key: bytes) -> Path:
    (tmp_path / "key").write_bytes(key)
    config = tmp_path / "poller.toml"
    config.write_text(
        '[glance]\nbase_url = "http://127.0.0.1:9"\n[kafka]\nbootstrap_servers = "127.0.0.1:9"\n'
        f'[state]\npath = "{tmp_path}/state.sqlite3"\n'
        f'[[partners]]\nid = 12345\napi_key_file = "{tmp_path}/key"\n'
    )
    return config


# The daemon and the offline check exit 2; the online check reports a failed check, 1.
CONFIG_EXITS = [(["run"], 2), (["check", "--offline"], 2), (["check"], 1)]


@pytest.mark.parametrize(
    "key",
    [
        (KEY + "\xa0\n").encode("latin-1"),  # an editor's no-break space, saved as Latin-1
        ("\ufeff" + KEY + "\r\n").encode("utf-16-le"),  # PowerShell's `echo key > file`
    ],
    ids=["latin-1", "utf-16"],
)
@pytest.mark.parametrize(("command", "code"), CONFIG_EXITS)
def test_a_key_file_that_is_not_utf8_is_a_configuration_error_that_never_shows_the_key(
    tmp_path: Path, key: bytes, command: list[str], code: int
) -> None:
    result = run(*command, "--config", str(_config_with_key_file(tmp_path, key)))
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "partners[0].api_key_file" in output and "UTF-8" in output
    assert KEY not in output and "\\x00".join(KEY[:6]) not in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize(("command", "code"), CONFIG_EXITS)
def test_a_section_variable_not_json_is_a_configuration_error_that_never_shows_its_value(
    tmp_path: Path, command: list[str], code: int
) -> None:
    config = tmp_path / "poller.toml"
    config.write_text('[glance]\nbase_url = "http://127.0.0.1:9"\n[[partners]]\nid = 12345\n')
    broken = f'{{"security_protocol": "SASL_SSL", "sasl_password": "{KAFKA_PASSWORD}", '
    result = run(
        *command,
        "--config",
        str(config),
        env={"GLANCE_API_KEY": "it-api-key-5f2b9c", "POLLER_KAFKA": broken},
    )
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "POLLER_KAFKA" in output
    assert KAFKA_PASSWORD not in output, output
    assert "Traceback" not in output


def test_an_unexpected_failure_before_the_configuration_is_read_shows_no_local_value() -> None:
    """A bug while the configuration is read: logging (and its redaction) is not set up yet,
    and structlog's default tracebacks list every frame's local variables, secrets included."""
    program = (
        "import sys\n"
        "import poller.cli as cli\n"
        "def load_config(path, *, need_credentials=True):\n"
        f"    api_key = {KEY!r}\n"
        "    raise RuntimeError('a bug while reading the configuration')\n"
        "cli.load_config = load_config\n"
        "sys.exit(cli.main(['run']))\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_"))}
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=base, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "unexpected failure" in output and "a bug while reading the configuration" in output
    assert KEY not in output, output
