"""What integration tests drive: the emulator and the daemon as real processes, and a
consumer that reads back what reached the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "kafka"))
from local_broker import BrokerFailed, LocalBroker, free_port  # noqa: F401 (re-exported)

PYTHON = sys.executable
CLOCK_TRUSTED = "36500d"
PARTNER_ID = 12345
API_KEY = "it-api-key-5f2b9c"
FROZEN_NOW = "2026-03-10T12:00:00Z"
# An emulator whose clock stands still: tests move time explicitly, never by sleeping.
FROZEN_EMULATOR = (
    "--partner", f"{PARTNER_ID}:{API_KEY}",
    "--seed", "7",
    "--clock-start", FROZEN_NOW,
    "--clock-speed", "0",
    "--traffic-rate", "0",
)  # fmt: skip


@contextmanager
def running(broker: LocalBroker) -> Iterator[LocalBroker]:
    """A started broker, removed afterwards; one that cannot start fails the test plainly."""
    try:
        broker.start()
    except BrokerFailed as exc:
        broker.cleanup()
        pytest.fail(f"the local Kafka broker did not start:\n{exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.cleanup()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Emulator:
    """A `glance-poller emulator` process and its admin API."""

    def __init__(self, workdir: Path, *args: str) -> None:
        port_file = workdir / f"emulator-{uuid.uuid4().hex[:6]}.port"
        self.log_path = workdir / "emulator.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "poller",
                "emulator",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: port_file.exists() and port_file.read_text().strip() != "",
            20,
            "the emulator to listen",
        )
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())

    def sessions(self, state: str = "ended", partner_id: int = PARTNER_ID) -> list[dict[str, Any]]:
        return list(
            self.admin("GET", f"/admin/sessions?partnerId={partner_id}&state={state}")["sessions"]
        )

    def stats(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/admin/stats")["calls"])

    def advance(self, seconds: float) -> None:
        self.admin("POST", "/admin/clock", {"advance": seconds})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@dataclass
class Topics:
    completed: str
    started: str
    counts: str
    dlq: str

    @classmethod
    def unique(cls) -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(*(f"it.{tag}.{name}" for name in ("completed", "started", "counts", "dlq")))


@dataclass
class PollerRun:
    """Runs `glance-poller run` against one emulator, one broker, one state file."""

    workdir: Path
    emulator_url: str
    bootstrap: str
    topics: Topics
    api_key: str = API_KEY
    partner_id: int = PARTNER_ID
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # More partners beside the main one: id -> API key.
    other_partners: dict[int, str] = field(default_factory=dict)
    # More environment for the daemon (secrets that config files must not hold).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def state_path(self) -> Path:
        return self.workdir / "state.sqlite3"

    def config_file(self) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "glance": {
                "base_url": self.emulator_url,
                "page_size": 100,
                "request_timeout": "10s",
                # The emulator's clock stands in 2026-03 whatever the host's date: its Date is
                # trusted here (the tolerance's own tests set it small).
                "clock_tolerance": CLOCK_TRUSTED,
            },
            "kafka": {"bootstrap_servers": self.bootstrap, "linger_ms": 5},
            "topics": vars(self.topics),
            "completed": {"interval": "1s", "overlap": "5m", "start_lookback": "2h"},
            "reconcile": {"interval": "1s"},
            "started": {"interval": "1s"},
            "counts": {"interval": "1m"},
            "service": {"start_jitter": "200ms"},
            "server": {"port": 0, "host": "127.0.0.1"},
            "state": {"path": str(self.state_path)},
            "retry": {"initial_delay": "50ms", "max_delay": "1s"},
            "log": {"level": "info", "format": "json"},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        for partner_id in self._keys():
            lines += ["[[partners]]", f"id = {partner_id}", f'api_key_env = "IT_KEY_{partner_id}"']
        path = self.workdir / "poller.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def environment(self) -> dict[str, str]:
        """The daemon's environment: the keys, no stray POLLER_/GLANCE_/KAFKA_ settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
        }
        env.update({f"IT_KEY_{pid}": key for pid, key in self._keys().items()})
        env.update(self.extra_env)
        return env

    def _keys(self) -> dict[int, str]:
        return {self.partner_id: self.api_key, **self.other_partners}

    def once(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "poller", "run", "--once", "--config", str(self.config_file())],
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=timeout,
            check=False,
        )

    def start(self, log_name: str = "poller.log") -> subprocess.Popen[bytes]:
        log = (self.workdir / log_name).open("ab")
        process = subprocess.Popen(
            [PYTHON, "-m", "poller", "run", "--config", str(self.config_file())],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
        )
        log.close()
        return process

    def log_text(self, log_name: str = "poller.log") -> str:
        path = self.workdir / log_name
        return path.read_text() if path.exists() else ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Consumed:
    topic: str
    key: str | None
    headers: dict[str, str]
    value: Any
    offset: int
    # Producer create time (ms): orders events across topics.
    timestamp: int


def consume(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    idle: float = 2.0,
    timeout: float = 90.0,
) -> list[Consumed]:
    """Everything on ``topic``, from the beginning to its end offsets at the time of reading.

    With ``expect``: wait (up to ``timeout``) until that many records are there, then wait
    ``idle`` more seconds and read to the end again, so that extras are caught too.
    """
    return asyncio.run(_consume(bootstrap, topic, expect, idle, timeout))


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partitions as the cluster knows them now (none: no such topic yet); every
    topic is asked for, so that asking creates none."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for described in await admin.describe_topics():
            if described["topic"] == topic and not described["error_code"]:
                return sorted(p["partition"] for p in described["partitions"])
        return []
    finally:
        await admin.close()


async def _consume(
    bootstrap: str, topic: str, expect: int | None, idle: float, limit: float
) -> list[Consumed]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Consumed] = []
    deadline = time.monotonic() + limit
    try:
        partitions: list[TopicPartition] = []
        while not partitions:
            # A fresh metadata fetch: the consumer's own cache only knows assigned topics.
            found = await topic_partitions(bootstrap, topic)
            partitions = [TopicPartition(topic, p) for p in found]
            if partitions or expect is None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if not partitions:
            return records
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        waited_idle = False
        while True:
            await _read_to_end(consumer, partitions, records, deadline)
            if expect is None or time.monotonic() > deadline:
                break
            if len(records) >= expect:
                if waited_idle or not idle:
                    break
                await asyncio.sleep(idle)
                waited_idle = True
                continue
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    return records


async def _read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    records: list[Consumed],
    deadline: float,
) -> None:
    end = await consumer.end_offsets(partitions)
    while time.monotonic() < deadline:
        positions = [await consumer.position(tp) for tp in partitions]
        if all(pos >= end[tp] for pos, tp in zip(positions, partitions, strict=True)):
            return
        batch = await consumer.getmany(timeout_ms=500)
        for messages in batch.values():
            records.extend(
                Consumed(
                    m.topic,
                    m.key.decode() if m.key is not None else None,
                    {k: v.decode() for k, v in m.headers},
                    orjson.loads(m.value),
                    m.offset,
                    m.timestamp,
                )
                for m in messages
            )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> int:
    process.send_signal(sig)
    return process.wait(60)


def log_events(text: str, event: str, **match: Any) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` whose fields equal ``match``."""
    found = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        entry = orjson.loads(line)
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            found.append(entry)
    return found


def operator_port(log: str) -> int | None:
    """The metrics/health port a running daemon announced in its start line."""
    started = log_events(log, "glance-poller started")
    return started[-1].get("metrics_port") if started else None


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        head, _, rest = series.partition("{")
        if head != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        if all(pairs.get(k, "").strip('"') == v for k, v in labels.items()):
            total += float(value)
    return total
