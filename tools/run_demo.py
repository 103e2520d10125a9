"""``make run``: a local Kafka broker, the emulator with live traffic, the daemon, and the feed.

Everything runs on loopback and is stopped (and the broker's data removed) on Ctrl-C.
The daemon's and the emulator's logs go to ``.run/``; the terminal shows the events.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "kafka"))

from local_broker import BrokerFailed, LocalBroker  # noqa: E402

RUN = ROOT / ".run"
DEMO_PARTNER = "12345"
DEMO_KEY = "demo-api-key"


def _spawn(args: list[str], log: Path | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else None
    # A session of its own: Ctrl-C reaches only this script, which stops children in order.
    return subprocess.Popen(
        [sys.executable, "-m", "poller", *args],
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-events", type=int, help="stop after printing this many events")
    parser.add_argument("--traffic-rate", type=float, default=30.0, help="sessions per minute")
    args = parser.parse_args()

    RUN.mkdir(exist_ok=True)
    for stale in RUN.glob("state.sqlite3*"):
        stale.unlink()  # the broker is new every run, so the state must be too
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker: LocalBroker | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        print("starting a local Kafka broker ...", flush=True)
        broker = LocalBroker()
        broker.start()
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
            if emulator.poll() is not None or time.monotonic() > deadline:
                print("the emulator did not start; see .run/emulator.log", file=sys.stderr)
                return 1
            time.sleep(0.1)
        env |= {
            "GLANCE_BASE_URL": f"http://127.0.0.1:{int(port_file.read_text())}",
            "GLANCE_API_KEY": DEMO_KEY,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "POLLER_STATE_PATH": str(RUN / "state.sqlite3"),
        }
        config = ["--config", str(ROOT / "config" / "demo.toml")]
        children.append(_spawn(["run", *config], RUN / "poller.log", env))
        tail_args = ["tail", *config, "--from-beginning"]
        if args.max_events:
            tail_args += ["--max-events", str(args.max_events)]
        tail = _spawn(tail_args, None, env)
        children.append(tail)
        print(
            f"broker {broker.bootstrap}, emulator {env['GLANCE_BASE_URL']}; daemon log: "
            ".run/poller.log. Waiting for sessions to complete (Ctrl-C stops everything) ...",
            flush=True,
        )
        while not stopping and tail.poll() is None:
            crashed = [c for c in children[:-1] if c.poll() is not None]
            if crashed:
                print("a component stopped unexpectedly; see the logs in .run/", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except BrokerFailed as exc:
        print(f"the local Kafka broker failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        for child in reversed(children):
            _stop(child)
        if broker is not None:
            broker.cleanup()


if __name__ == "__main__":
    sys.exit(main())
