"""Processes the benchmark drives: the emulator, `glance-poller run` and `backfill`.

Everything is a real process, as in production and in the integration tests; only the state
commit microbenchmark runs in the benchmark's own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
PARTNER_ID = 12345
API_KEY = "bench-api-key-7d41e0"
KEY_ENV = "BENCH_GLANCE_KEY"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = 1000

_T0 = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr, with the time since the benchmark started."""
    elapsed = time.monotonic() - _T0
    print(f"[bench {int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", file=sys.stderr)
    sys.stderr.flush()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def partner_key(partner_id: int) -> str:
    """Each partner's own API key (the first one's is the environment's, as in production)."""
    return API_KEY if partner_id == PARTNER_ID else f"bench-key-{partner_id}-{API_KEY[-6:]}"


def child_env() -> dict[str, str]:
    """The benchmark's environment without the daemon's own variables, plus the API key."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    env[KEY_ENV] = API_KEY
    return env


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


class Emulator:
    """A `glance-poller emulator` process and its admin API."""

    def __init__(self, workdir: Path, *args: str, partners: Sequence[int] = (PARTNER_ID,)) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.partners = list(partners)
        partner_args = [f"--partner={pid}:{partner_key(pid)}" for pid in self.partners]
        port_file = workdir / f"emulator-{uuid.uuid4().hex[:6]}.port"
        self.log_path = workdir / "emulator.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    PYTHON, "-m", "poller", "emulator",
                    "--port", "0",
                    "--port-file", str(port_file),
                    *partner_args,
                    "--log-level", "WARNING",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=ROOT,
            )  # fmt: skip
        try:
            wait_until(
                lambda: self._alive() and port_file.exists() and port_file.read_text().strip(),
                30,
                "the emulator to listen",
            )
        except RuntimeError:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the emulator exited early; see {self.log_path}")
        return True

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return orjson.loads(response.read())

    def load_completed(
        self, count: int, since: datetime, until: datetime, *, chunk: int = 100_000, seed: int = 1
    ) -> tuple[int, int]:
        """``count`` sessions starting in [since, until), all ended by the (frozen) clock, in
        chunks of consecutive sub-ranges (ids ascend with start times); -> (first, last) id."""
        chunks = max(1, -(-count // chunk))
        span = (until - since) / chunks
        first = last = None
        made = 0
        for index in range(chunks):
            size = count // chunks + (1 if index < count % chunks else 0)
            created = self.admin(
                "POST",
                "/admin/traffic",
                {
                    "partnerId": PARTNER_ID,
                    "count": size,
                    "from": iso(since + span * index),
                    "until": iso(since + span * (index + 1)),
                    "seed": seed * 1000 + index,
                },
                timeout=600,
            )
            first = created["firstId"] if first is None else first
            last = created["lastId"]
            made += created["created"]
            if chunks > 1:
                say(f"  emulator: {made:,} / {count:,} sessions")
        assert first is not None and last is not None
        return first, last

    def start_time_of(self, session_id: int) -> datetime:
        found = self.admin("GET", f"/admin/sessions?fromId={session_id}&limit=1&records=false")
        return datetime.fromisoformat(found["sessions"][0]["startTime"])

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def stop(self) -> None:
        stop_process(self.process, grace=20)


@dataclass
class Topics:
    completed: str
    started: str
    counts: str
    dlq: str

    @classmethod
    def unique(cls, purpose: str) -> Topics:
        tag = f"bench.{purpose}.{uuid.uuid4().hex[:8]}"
        return cls(*(f"{tag}.{name}" for name in ("completed", "started", "counts", "dlq")))


def write_config(
    path: Path,
    *,
    emulator_url: str,
    bootstrap: str,
    topics: Topics,
    state_path: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    partners: Sequence[int] = (PARTNER_ID,),
) -> Path:
    """A daemon configuration like the integration tests', with production defaults for
    everything the benchmark does not need to change (Kafka batching included). The first
    partner's key comes from the environment, every other partner's from its own key file."""
    sections: dict[str, dict[str, Any]] = {
        "glance": {"base_url": emulator_url, "page_size": PAGE_SIZE, "request_timeout": "30s"},
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": vars(topics),
        "server": {"port": 0, "host": "127.0.0.1"},
        "state": {"path": str(state_path)},
        "service": {"start_jitter": "0s"},
        "log": {"level": "info", "format": "json"},
    }
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    for partner_id in partners:
        lines += ["[[partners]]", f"id = {partner_id}"]
        if partner_id == PARTNER_ID:
            lines.append(f'api_key_env = "{KEY_ENV}"')
        else:
            key_file = path.parent / "keys" / str(partner_id)
            key_file.parent.mkdir(exist_ok=True)
            key_file.write_text(partner_key(partner_id) + "\n")
            key_file.chmod(0o600)
            lines.append(f"api_key_file = {_toml(str(key_file))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def spawn_poller(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [PYTHON, "-m", "poller", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=ROOT,
        )


@dataclass(frozen=True)
class Exited:
    returncode: int
    seconds: float  # from spawn to exit
    max_rss_kb: int  # peak resident set (ru_maxrss: kilobytes on Linux)
    cpu_seconds: float  # user + system


def run_measured(args: list[str], log_path: Path, timeout: float) -> Exited:
    """Run a `python -m poller ...` command to its end through ``peak_rss.py`` and read its
    own peak RSS (``ru_maxrss`` from ``os.wait4``: the true peak, not a sample), CPU time and
    the time from its spawn to its exit (seen the moment it happens, no polling)."""
    result_path = log_path.with_suffix(".rusage.json")
    with log_path.open("ab") as log:
        wrapper = subprocess.Popen(
            [PYTHON, str(HERE / "peak_rss.py"), str(result_path), PYTHON, "-m", "poller", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=ROOT,
            start_new_session=True,  # a timeout kills the wrapper and the command together
        )
    try:
        wrapper.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        raise RuntimeError(
            f"{args[0]} did not finish within {timeout:g}s; see {log_path}"
        ) from None
    usage = json.loads(result_path.read_text())
    return Exited(
        int(usage["returncode"]),
        float(usage["seconds"]),
        int(usage["max_rss_kb"]),
        float(usage["cpu_seconds"]),
    )


def stop_process(process: subprocess.Popen[bytes], grace: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat (clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def frozen_clock() -> datetime:
    """The emulator's frozen "now" for backfills: a fixed instant, so runs are comparable."""
    return datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def backfill_range(clock: datetime, days: int = 29) -> tuple[datetime, datetime]:
    """``days`` of past sessions (29: one upstream window, < 31 days), all ended by ``clock``
    (the longest generated session lasts 12 h)."""
    return clock - timedelta(days=days + 1), clock - timedelta(days=1)
