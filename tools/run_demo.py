"""``make run``: a local Kafka broker, the emulator with live traffic, the daemon, and the feed.

Everything runs on loopback and is stopped (and the broker's data removed) on Ctrl-C, on
SIGTERM, and when the terminal is closed (SIGHUP). The daemon's and the emulator's logs go to
``.run/``; the terminal shows a header (what runs where), a legend, and the events, in colour
on a terminal unless ``NO_COLOR`` is set.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "kafka"))

from local_broker import BrokerFailed, LocalBroker, free_port  # noqa: E402

RUN = ROOT / ".run"
DEMO_PARTNER = "12345"
DEMO_KEY = "demo-api-key"

# What `glance-poller tail` prints (poller/tail.py, format_line), field by field.
SESSION_TYPES = {"C": "cobrowse", "G": "screen share", "V": "video"}
STATUSES = {
    "C": "clean close",
    "X": "no clean close (browser closed, network dropped)",
    "Q": "quit while waiting",
    "T": "timed out waiting",
    "D": "dropped / declined",
    "E": "error",
    "K": "killed",
    "U": "unknown end",
}
_GOOD, _FAIR = {"C"}, {"X"}
LINE_FORMAT = (
    "<end time, UTC>  completed  partner=<id> session=<id> type=<letter> status=<letter> "
    "duration=<seconds>s guests=<number> user=<name>"
)

_RESET, _BOLD, _DIM = "\033[0m", "\033[1m", "\033[2m"
_GREEN, _YELLOW, _RED, _CYAN = "\033[32m", "\033[33m", "\033[31m", "\033[36m"


def _status_colour(letter: str) -> str:
    return _GREEN if letter in _GOOD else _YELLOW if letter in _FAIR else _RED


def colour_enabled(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org) or TERM=dumb."""
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


class Screen:
    """What the demo writes to the terminal. Once the terminal is gone (SIGHUP, or a write
    fails) everything further is dropped: the demo must still stop what it started."""

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour
        self._lock = threading.Lock()
        self.gone = False

    def paint(self, text: str, *codes: str) -> str:
        return "".join(codes) + text + _RESET if self.colour and codes else text

    def say(self, text: str = "", *, stream: TextIO | None = None) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                print(text, file=stream or self.stream, flush=True)
            except (OSError, ValueError):
                self.gone = True

    def hang_up(self) -> None:
        self.gone = True

    def event(self, line: str) -> str:
        """One of tail's lines, its status letter coloured (green clean, yellow not, red bad)."""
        if not self.colour:
            return line
        if line.startswith("DEAD LETTER"):
            return self.paint(line, _RED)

        def status(match: re.Match[str]) -> str:
            letter = match.group(1)
            return "status=" + self.paint(letter, _BOLD, _status_colour(letter))

        return re.sub(r"status=(\S+)", status, line, count=1)


def header(
    screen: Screen,
    *,
    broker: str,
    broker_data: Path,
    emulator: str,
    metrics_port: int,
    state: Path,
    traffic_rate: float,
) -> list[str]:
    """What is running where, and how to stop it."""

    def row(label: str, value: str, note: str = "") -> str:
        return (
            f"  {screen.paint(f'{label:<13}', _BOLD)}{value}"
            + (f"  {screen.paint(note, _DIM)}" if note else "")
        ).rstrip()

    operator = f"http://127.0.0.1:{metrics_port}"
    return [
        screen.paint("glance-poller demo", _BOLD, _CYAN) + " (make run): everything on loopback",
        row("broker", broker, f"Kafka, single node; data in {broker_data}, removed on exit"),
        row(
            "emulator",
            emulator,
            f"Glance Activity Service: partner {DEMO_PARTNER} (key {DEMO_KEY}), "
            f"{traffic_rate:g} new sessions/min",
        ),
        row("daemon", f"{operator}/metrics", f"also {operator}/healthz and /readyz"),
        row("state file", _shown(state)),
        row("logs", f"{_shown(RUN / 'poller.log')} (daemon), {_shown(RUN / 'emulator.log')}"),
        row("stop", "Ctrl-C, or close this terminal: stops the broker, emulator and daemon"),
    ]


def legend(screen: Screen) -> list[str]:
    """The columns of an event line, once."""
    types = ", ".join(f"{k} {v}" for k, v in SESSION_TYPES.items())

    def letters(keys: list[str]) -> str:
        return ", ".join(f"{screen.paint(k, _BOLD, _status_colour(k))} {STATUSES[k]}" for k in keys)

    return [
        "Each line is one session.completed event, as it reached Kafka:",
        "  " + screen.paint(LINE_FORMAT, _DIM),
        f"  type     {types}",
        f"  status   {letters(['C', 'X'])}",
        f"           {letters([k for k in STATUSES if k not in ('C', 'X')])}",
        "  guests   how many joined; user: the partner's user who ran the session",
        "  DEAD LETTER lines: a record that could not become an event (see glance.dlq)",
    ]


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _spawn(
    args: list[str], log: Path | None, env: dict[str, str], *, pipe: bool = False
) -> subprocess.Popen[bytes]:
    out: IO[bytes] | int | None = log.open("wb") if log else subprocess.PIPE if pipe else None
    # A session of its own: a signal for the terminal reaches only this script, which stops
    # the children in order.
    return subprocess.Popen(
        [sys.executable, "-m", "poller", *args],
        stdout=out,
        stderr=subprocess.STDOUT if log else None,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 25.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _relay(tail: subprocess.Popen[bytes], screen: Screen) -> threading.Thread:
    """Tail's lines to the screen, coloured; keeps draining them when the screen is gone."""

    def run() -> None:
        assert tail.stdout is not None
        for raw in tail.stdout:
            screen.say(screen.event(raw.decode(errors="replace").rstrip("\n")))

    thread = threading.Thread(target=run, name="tail-relay", daemon=True)
    thread.start()
    return thread


class _Stop:
    """Set by the signal handlers (only a flag: the main loop does the stopping)."""

    def __init__(self) -> None:
        self._requested = False

    def request(self) -> None:
        self._requested = True

    def requested(self) -> bool:
        return self._requested


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-events", type=int, help="stop after printing this many events")
    parser.add_argument("--traffic-rate", type=float, default=30.0, help="sessions per minute")
    args = parser.parse_args()
    screen = Screen(sys.stdout, colour_enabled(sys.stdout, os.environ))

    RUN.mkdir(exist_ok=True)
    for stale in RUN.glob("state.sqlite3*"):
        stale.unlink()  # the broker is new every run, so the state must be too
    stop = _Stop()

    def on_signal(signum: int, frame: object) -> None:
        stop.request()
        if signum == signal.SIGHUP:
            screen.hang_up()  # the terminal is gone: writing to it would fail

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    broker: LocalBroker | None = None
    children: list[subprocess.Popen[bytes]] = []
    relay: threading.Thread | None = None
    try:
        screen.say("starting a local Kafka broker ...")
        broker = LocalBroker()
        broker.start()
        if stop.requested():
            return 0
        port_file = RUN / "emulator.port"
        port_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_"))}
        emulator = _spawn(
            [
                "emulator",
                "--port", "0",
                "--port-file", str(port_file),
                "--partner", f"{DEMO_PARTNER}:{DEMO_KEY}",
                "--traffic-rate", str(args.traffic_rate),
                "--backlog-hours", "1",
                "--seed", "42",
            ],
            RUN / "emulator.log",
            env,
        )  # fmt: skip
        children.append(emulator)
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if stop.requested():
                return 0
            if emulator.poll() is not None or time.monotonic() > deadline:
                screen.say("the emulator did not start; see .run/emulator.log", stream=sys.stderr)
                return 1
            time.sleep(0.1)
        metrics_port = free_port()
        state = RUN / "state.sqlite3"
        env |= {
            "GLANCE_BASE_URL": f"http://127.0.0.1:{int(port_file.read_text())}",
            "GLANCE_API_KEY": DEMO_KEY,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "POLLER_STATE_PATH": str(state),
            "POLLER_SERVER__PORT": str(metrics_port),
        }
        config = ["--config", str(ROOT / "config" / "demo.toml")]
        children.append(_spawn(["run", *config], RUN / "poller.log", env))
        tail_args = ["tail", *config, "--from-beginning"]
        if args.max_events:
            tail_args += ["--max-events", str(args.max_events)]
        tail = _spawn(tail_args, None, env, pipe=True)
        children.append(tail)
        for line in header(
            screen,
            broker=broker.bootstrap,
            broker_data=broker.workdir,
            emulator=env["GLANCE_BASE_URL"],
            metrics_port=metrics_port,
            state=state,
            traffic_rate=args.traffic_rate,
        ):
            screen.say(line)
        screen.say()
        for line in legend(screen):
            screen.say(line)
        screen.say()
        screen.say("waiting for sessions to complete ...")
        relay = _relay(tail, screen)
        while not stop.requested() and tail.poll() is None:
            crashed = [c for c in children[:-1] if c.poll() is not None]
            if crashed:
                screen.say(
                    "a component stopped unexpectedly; see the logs in .run/", stream=sys.stderr
                )
                return 1
            time.sleep(0.2)
        if tail.poll() is not None:
            relay.join(5)  # its last lines before "stopping"
        return 0
    except BrokerFailed as exc:
        screen.say(f"the local Kafka broker failed: {exc}", stream=sys.stderr)
        return 1
    finally:
        screen.say("stopping ...")
        for child in reversed(children):
            _stop(child)
        if broker is not None:
            broker.cleanup()
        screen.say("stopped: broker, emulator and daemon; the broker's data is removed")


if __name__ == "__main__":
    sys.exit(main())
