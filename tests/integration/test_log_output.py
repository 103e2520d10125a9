"""The daemon's log output stalled: a log collector that stops reading its pipe must stop
neither the feed, nor the health endpoints, nor a clean SIGTERM."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    Emulator,
    PollerRun,
    consume,
    free_port,
    http_get,
    wait_until,
)

SHUTDOWN_TIMEOUT = 8


def unread_bytes(read_end: int) -> int:
    """How many bytes wait in the pipe, without reading them."""
    count = array.array("i", [0])
    fcntl.ioctl(read_end, termios.FIONREAD, count)
    return count[0]


class PipeFull:
    """True once the pipe holds lines and has taken no more for three seconds: the daemon
    logs several lines a second at debug, so its next one did not fit (a line of up to a page
    is written whole or not at all)."""

    def __init__(self, read_end: int) -> None:
        self.read_end = read_end
        self.seen: list[tuple[float, int]] = []

    def __call__(self) -> bool:
        now, unread = time.monotonic(), unread_bytes(self.read_end)
        self.seen = [(t, n) for t, n in self.seen if n == unread] + [(now, unread)]
        return unread > 0 and now - self.seen[0][0] >= 3


def sessions_ended(emulator: Emulator, start: str, end: str, count: int) -> set[int]:
    created = emulator.admin(
        "POST",
        "/admin/sessions",
        {
            "partnerId": PARTNER_ID,
            "sessions": [
                {"startTime": start, "endTime": end, "status": "X", "userName": f"agent.{n}"}
                for n in range(count)
            ],
        },
    )
    return set(created["ids"])


@dataclass
class PipedDaemon:
    process: subprocess.Popen[bytes]
    read_end: int | None  # None once the collector is gone
    port: int
    # Sessions that ended before the daemon started.
    before: set[int]

    def close_reader(self) -> None:
        """The collector dies: every further write fails (EPIPE)."""
        assert self.read_end is not None
        os.close(self.read_end)
        self.read_end = None


@contextlib.contextmanager
def daemon_on_a_pipe(emulator: Emulator, poller: PollerRun) -> Iterator[PipedDaemon]:
    """The daemon logging a lot (debug, every stream each second) to a pipe of one page, so
    that a collector that stops reading is reached in seconds, after two sessions ended.
    Killed if still running at the end, and the pipe's read end closed."""
    emulator.advance(60)  # 12:01:00
    before = sessions_ended(emulator, "2026-03-10T12:00:10Z", "2026-03-10T12:00:40Z", 2)
    port = free_port()
    poller.settings.update(
        {
            "log": {"level": "debug", "format": "json"},
            "counts": {"interval": "1s"},
            "server": {"host": "127.0.0.1", "port": port},
            "service": {"start_jitter": "0s", "shutdown_timeout": f"{SHUTDOWN_TIMEOUT}s"},
        }
    )
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    process = subprocess.Popen(
        [PYTHON, "-m", "poller", "run", "--config", str(poller.config_file())],
        stdout=write_end,
        stderr=subprocess.STDOUT,
        env=poller.environment(),
    )
    os.close(write_end)
    daemon = PipedDaemon(process, read_end, port, before)
    try:
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if daemon.read_end is not None:
            daemon.close_reader()


def stops_cleanly_on_sigterm(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    # A wedge detector, not a performance figure: the stop's own bound, with room to spare.
    assert process.wait(timeout=SHUTDOWN_TIMEOUT + 15) == 0


def the_feed_goes_on(emulator: Emulator, poller: PollerRun, port: int, earlier: set[int]) -> None:
    """Sessions that end now reach Kafka, /readyz and /healthz answer, SIGTERM exits 0."""
    emulator.advance(30)  # 12:01:30
    later = sessions_ended(emulator, "2026-03-10T12:01:05Z", "2026-03-10T12:01:25Z", 3)
    emulator.advance(5)
    expected = earlier | later
    records = consume(poller.bootstrap, poller.topics.completed, expect=len(expected), timeout=60)
    assert {int(str(r.key)) for r in records} == expected
    status, body = http_get(port, "/readyz")
    assert status == 200, body
    assert http_get(port, "/healthz")[0] == 200


def test_a_stalled_log_pipe_stops_neither_the_feed_nor_health_nor_sigterm(
    emulator: Emulator, poller: PollerRun
) -> None:
    with daemon_on_a_pipe(emulator, poller) as daemon:
        assert daemon.read_end is not None
        full = PipeFull(daemon.read_end)
        wait_until(full, 60, "the log pipe to fill", interval=0.5)
        # Nobody reads: every further line the daemon writes finds the pipe full.
        the_feed_goes_on(emulator, poller, daemon.port, daemon.before)
        assert full(), "the pipe has room again"
        stops_cleanly_on_sigterm(daemon.process)


def test_a_log_reader_that_is_gone_stops_neither_the_feed_nor_health_nor_sigterm(
    emulator: Emulator, poller: PollerRun
) -> None:
    with daemon_on_a_pipe(emulator, poller) as daemon:
        assert daemon.read_end is not None
        read = bytearray()
        while b"glance-poller started" not in read:  # the collector reads the first lines...
            chunk = os.read(daemon.read_end, 65536)
            assert chunk, f"the daemon ended before its start line: {bytes(read)!r}"
            read += chunk
        daemon.close_reader()
        the_feed_goes_on(emulator, poller, daemon.port, daemon.before)
        stops_cleanly_on_sigterm(daemon.process)
