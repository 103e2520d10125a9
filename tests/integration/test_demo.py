"""`make run`'s orchestrator: broker, emulator with live traffic, daemon, and the feed."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(ROOT / "tools" / "run_demo.py")]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return env | extra


def test_the_demo_prints_events_and_stops_everything_it_started() -> None:
    result = subprocess.run(
        [*DEMO, "--max-events", "3"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
        env=_demo_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [
        line
        for line in result.stdout.splitlines()
        if re.search(r" completed +partner=12345 session=\d+ ", line)
    ]
    assert len(events) == 3, result.stdout
    assert not ANSI.search(result.stdout), "colour on a pipe"
    lines = result.stdout.rstrip().splitlines()
    assert lines[-2:] == [
        "stopping ...",
        "stopped: broker, emulator and daemon; the broker's data is removed",
    ]
    broker = re.search(r"broker +(127\.0\.0\.1:\d+)", result.stdout)
    assert broker is not None
    probe = subprocess.run(
        ["bash", "-c", f"exec 3<>/dev/tcp/{broker.group(1).replace(':', '/')}"],
        capture_output=True,
        check=False,
    )
    assert probe.returncode != 0, "the broker is still listening after the demo stopped"


# -- closing the terminal ----------------------------------------------------------------


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(root: int) -> set[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid in pids if _parent_of(pid) in frontier} - found
        found |= children
        frontier = children
    return found


def _listening(pids: set[int]) -> dict[int, set[str]]:
    """Port -> local addresses of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, one of theirs
                found.setdefault(int(hex_port, 16), set()).add(address)
    return found


# 127.0.0.1, ::1, and 127.0.0.1 mapped into IPv6 (how Java lists a socket bound to 127.0.0.1).
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


class _Terminal:
    """A pseudo-terminal the demo writes to, and everything it wrote."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self._chunks: list[bytes] = []
        self._closing = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Polls, so that close() can stop it before the descriptor is closed (and reused).
        while not self._closing:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: no writer left
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def close_slave(self) -> None:
        """The demo holds it now (its terminal); this process keeps only the master side."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        """The terminal is gone: the master side closed, every write to it fails."""
        self.close_slave()
        self._closing = True
        self._reader.join()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
def terminal() -> Iterator[_Terminal]:
    term = _Terminal()
    try:
        yield term
    finally:
        term.close()


def test_closing_the_terminal_stops_everything(terminal: _Terminal) -> None:
    demo = subprocess.Popen(
        DEMO,
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=terminal.slave,
        cwd=ROOT,
        env=_demo_env(TERM="xterm"),
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    terminal.close_slave()
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 150
        while not re.search("(?i)waiting for sessions to complete", terminal.text):
            assert demo.poll() is None, terminal.text
            assert time.monotonic() < deadline, terminal.text
            time.sleep(0.2)
        children = _descendants(demo.pid)
        # The broker (java), the emulator, the daemon and tail.
        assert len(children) >= 4, children
        screen = ANSI.sub("", terminal.text)
        assert "\x1b[" in terminal.text, "no colour on a terminal"
        port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", screen)
        assert port is not None, screen
        deadline = time.monotonic() + 60
        while int(port.group(1)) not in _listening(children):
            assert time.monotonic() < deadline, "the daemon's operator port never listened"
            time.sleep(0.2)
        # The daemon's operator port, the emulator and the broker: loopback only.
        listening = _listening(children)
        assert len(listening) >= 4, listening  # operator, emulator, broker, controller
        for where, addresses in listening.items():
            assert addresses <= LOOPBACK, (where, addresses)

        # The terminal goes away: its foreground process group gets SIGHUP, and every later
        # write to it fails.
        terminal.close()
        hung_up = time.monotonic()
        os.killpg(demo.pid, signal.SIGHUP)

        demo.wait(90)
        assert time.monotonic() - hung_up < 90
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "children left running"
    finally:
        children |= _descendants(demo.pid)  # whatever a failed test leaves is stopped
        for pid in [demo.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait(30)
