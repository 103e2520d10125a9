"""The chaos soak: the daemon against the real broker and the emulator, under live traffic, while
the broker and the daemon are stopped, killed and restarted, upstream faults come and go and the
emulator clock moves; then every topic is read back and compared with what the emulator holds.

    python tools/soak.py [--minutes 10] [--seed N] [--report FILE] [--workdir DIR]

What runs: a single-node Kafka broker on a fixed data folder (stopped and started again on the
same port and data), the emulator with live traffic (sessions lasting up to hours on its clock,
a few bad records dead-lettered by design, one record too large for a Kafka message, a ``Date``
header jittered by a few seconds), and ``python -m poller run`` with short intervals and one state
file kept across its restarts. For ``--minutes``, at seeded random moments, one of: stop (SIGTERM)
or kill (SIGKILL) the broker and start it again after a while; SIGKILL or SIGTERM the daemon and
start it again; switch a rate of upstream faults on or off; switch the emulator's concurrency
limit (throttling, with latency) on or off; move the emulator clock (mostly forward, by up to 40
minutes, sometimes back by up to 90 seconds). The seed fixes the plan (which action, when, with
which parameters, relative to the start); what the processes do in between is real.

Then the chaos ends: the broker and the daemon are left running, faults and throttling are
switched off, live traffic stops, and the emulator clock moves past the end of every session
still open. The soak waits (at most ``--settle`` seconds) until everything expected has reached
Kafka, and at least two reconcile intervals more for late duplicates, then reads every topic from
the beginning, by partition assignment (no consumer group), and compares with the emulator's
admin listing:

* every session that ended, started after the daemon's first start minus
  ``completed.start_lookback`` (what the daemon is responsible for) and is not a planted bad
  record must be on the completed topic: absent = **lost**; several records with the same
  ``ce_id`` are allowed and counted (at-least-once), several ``ce_id`` values for one session
  are a failure;
* every planted bad record (and the oversized one) must be on the dead-letter topic;
* the delivery delay of a session is the broker's append time of its first record (the topics
  are created with ``message.timestamp.type=LogAppendTime``) minus the host instant at which
  the session became visible as ended upstream (the emulator clock's history is recorded, so
  an end that a clock move jumped over counts from that move; after a move back, from when it
  last became visible).

The last line printed is the verdict; the exit status is 0 for PASS, 1 for FAIL (anything lost,
a session under two ``ce_id`` values, a dead letter missing, the daemon crashing on its own, a
SIGTERM not ending it cleanly, or, with ``--max-delay``, a delivery later than that) and 2 when
the soak itself could not run. ``--without`` leaves parts of the chaos out (the plan of the
seed is otherwise the same), to find what a failure needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "kafka"))
from local_broker import BrokerFailed, LocalBroker  # noqa: E402

PYTHON = sys.executable
PARTNER_ID = 24680
API_KEY = "soak-api-key-7d41c2e9"
API_KEY_ENV = "SOAK_GLANCE_API_KEY"

# The daemon's settings (only keys the README documents). Short intervals: a soak of minutes
# must see many ticks of every stream.
START_LOOKBACK_S = 2 * 3600
RECONCILE_INTERVAL_S = 10.0
SHUTDOWN_TIMEOUT_S = 20.0
DAEMON_SETTINGS: dict[str, dict[str, Any]] = {
    "glance": {"page_size": 100, "request_timeout": "10s"},
    "kafka": {"linger_ms": 5, "request_timeout_ms": 15000},
    "completed": {"interval": "1s", "overlap": "5m", "start_lookback": f"{START_LOOKBACK_S}s"},
    "reconcile": {"interval": f"{RECONCILE_INTERVAL_S:g}s", "bucket": "1h", "horizon": "24h"},
    "started": {"interval": "1s"},
    "counts": {"interval": "30s"},
    "retry": {"initial_delay": "100ms", "max_delay": "5s", "max_retry_after": "10s"},
    "health": {"broker_check_interval": "2s", "broker_max_silence": "10s"},
    "service": {"shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S:g}s", "start_jitter": "200ms"},
    "server": {"host": "127.0.0.1", "port": 0},
    "log": {"level": "info", "format": "json"},
}

# Chaos: what may happen, and how often relative to the others.
ACTIONS = {
    "broker_restart": 2,
    "broker_kill": 1,
    "daemon_kill": 3,
    "daemon_term": 2,
    "faults": 2,
    "throttle": 1,
    "clock": 3,
}
# What --without can leave out (to find which part of the chaos a failure needs).
ACTION_GROUPS = {
    "broker_restart": "broker",
    "broker_kill": "broker",
    "daemon_kill": "daemon",
    "daemon_term": "daemon",
    "faults": "faults",
    "throttle": "throttle",
    "clock": "clock",
}
WITHOUT = ("broker", "daemon", "faults", "throttle", "clock", "bad", "oversized", "jitter")
FAULT_KINDS = [
    "error500",
    "throttle429",
    "throttle503",
    "reset",
    "truncate",
    "invalid_json",
    "slow",
]
BAD_MUTATIONS = ("bad_start_time", "mistyped", "missing_id", "bad_start_time", "mistyped")
OVERSIZED_GUESTS = 10_000
DATE_JITTER_S = 2.0


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def iso(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the emulator clock's history ----------------------------------------------------------------


@dataclass
class Segment:
    host: float
    """Host time (time.time()) at which this segment begins."""
    emu: float
    """Emulator time at that instant."""
    speed: float


@dataclass
class ClockLog:
    """The emulator clock as a function of host time: one segment per change."""

    segments: list[Segment] = field(default_factory=list)

    def record(self, host: float, emu: float, speed: float) -> None:
        self.segments.append(Segment(host, emu, speed))

    def emu_at(self, host: float) -> float:
        current = self.segments[0]
        for segment in self.segments:
            if segment.host > host:
                break
            current = segment
        return current.emu + (host - current.host) * current.speed

    def visible(self, end: float, until: float) -> tuple[float | None, float | None]:
        """For an instant ``end`` of the emulator clock: the first host instant at which the
        clock had reached it, and the one since which it has stayed reached (up to ``until``).
        """
        first: float | None = None
        since: float | None = None
        for index, segment in enumerate(self.segments):
            stop = self.segments[index + 1].host if index + 1 < len(self.segments) else until
            at_stop = segment.emu + (stop - segment.host) * segment.speed
            if segment.emu >= end:
                reached = segment.host
            else:
                since = None  # hidden at the start of this segment (if ever it was shown)
                if not (at_stop >= end and segment.speed > 0):
                    continue
                reached = segment.host + (end - segment.emu) / segment.speed
            if first is None:
                first = reached
            if since is None:
                since = reached
        return first, since


# -- the processes ---------------------------------------------------------------------------------


class Emulator:
    """``glance-poller emulator`` with live traffic, driven through its admin API."""

    def __init__(self, workdir: Path, seed: int, rate: float, max_duration: int) -> None:
        port_file = workdir / "emulator.port"
        self.log_path = workdir / "emulator.log"
        self._log = self.log_path.open("ab")
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
                "--partner",
                f"{PARTNER_ID}:{API_KEY}",
                "--seed",
                str(seed),
                "--clock-start",
                iso(time.time()),
                "--clock-speed",
                "1",
                "--traffic-rate",
                f"{rate:g}",
                "--backlog-hours",
                "1",
                "--max-duration",
                str(max_duration),
                "--log-level",
                "WARNING",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start; see {self.log_path}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def admin(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def clock_change(self, body: dict[str, Any] | None, clock: ClockLog) -> float:
        """Change (or just read) the clock; record the segment that begins; the emulated now."""
        before = time.time()
        answer = (
            self.admin("GET", "/admin/clock")
            if body is None
            else self.admin("POST", "/admin/clock", body)
        )
        after = time.time()
        emu = parse_instant(answer["now"])
        clock.record((before + after) / 2, emu, float(answer["speed"]))
        return emu

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class DaemonExit:
    code: int | None
    seconds: float
    hung: bool


class Daemon:
    """``python -m poller run`` on one configuration and one state file, restartable."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.log_path = workdir / "poller.log"
        self.config = config
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
        }
        self.env[API_KEY_ENV] = API_KEY
        self.process: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []
        self.log_offset = 0

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "poller", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.starts.append(time.time())

    def exited(self) -> int | None:
        """The exit code if the process has ended by itself, else None."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def term(self, grace: float) -> DaemonExit:
        """SIGTERM and wait ``grace`` seconds; a process still there then is SIGKILLed."""
        process = self.process
        self.process = None
        if process is None:
            return DaemonExit(None, 0.0, False)
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(grace)
            return DaemonExit(code, time.monotonic() - started, False)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return DaemonExit(None, time.monotonic() - started, True)

    def ready(self) -> bool:
        """Whether the process now running has logged its start line."""
        if self.process is None or not self.log_path.exists():
            return False
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return b'"glance-poller started"' in log.read()

    def metrics_port(self) -> int | None:
        port = None
        for entry in log_entries(self.log_path):
            if entry.get("event") == "glance-poller started":
                port = entry.get("metrics_port")
        return port if isinstance(port, int) else None


def log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
    return entries


def write_config(workdir: Path, emulator_url: str, bootstrap: str, topics: dict[str, str]) -> Path:
    sections: dict[str, dict[str, Any]] = {
        section: dict(values) for section, values in DAEMON_SETTINGS.items()
    }
    sections["glance"]["base_url"] = emulator_url
    sections["kafka"]["bootstrap_servers"] = bootstrap
    sections["topics"] = dict(topics)
    sections["state"] = {"path": str(workdir / "state.sqlite3")}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    lines += ["[[partners]]", f"id = {PARTNER_ID}", f'api_key_env = "{API_KEY_ENV}"']
    path = workdir / "poller.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# -- Kafka: topics and reading back --------------------------------------------------------------


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: bytes
    timestamp_ms: int
    timestamp_type: int

    def json(self) -> Any:
        try:
            return json.loads(self.value)
        except ValueError:
            return None


async def create_topics(bootstrap: str, topics: dict[str, str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=3 if role == "completed" else 1,
                    replication_factor=1,
                    # The broker stamps each record as it appends it: the delay measured is
                    # to the moment the event reached Kafka, not when the producer made it.
                    topic_configs={"message.timestamp.type": "LogAppendTime"},
                )
                for role, name in topics.items()
            ]
        )
    finally:
        await admin.close()


async def read_topics(bootstrap: str, names: list[str], limit: float = 120) -> list[Record]:
    """Every record of ``names`` from the beginning to the end offsets at the time of reading,
    by assignment (no group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        request_timeout_ms=30000,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        if not partitions:
            return records
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                break
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records.extend(
                    Record(
                        tp.topic,
                        tp.partition,
                        m.offset,
                        m.key.decode(errors="replace") if m.key is not None else None,
                        {k: v.decode(errors="replace") for k, v in m.headers},
                        m.value or b"",
                        m.timestamp,
                        m.timestamp_type,
                    )
                    for m in messages
                    if m.offset < end[tp]
                )
        else:
            raise TimeoutError("could not read the topics to their end offsets")
    finally:
        await consumer.stop()
    return records


# -- the soak ------------------------------------------------------------------------------------


@dataclass
class Planted:
    """Sessions the soak adds itself, beside the live traffic."""

    long_ids: list[int] = field(default_factory=list)
    bad: dict[int, str] = field(default_factory=dict)
    """Session id -> the mutation it is always served with."""
    bad_keys: dict[str, int] = field(default_factory=dict)
    """For missing_id records (served without an id): their session key -> id."""
    oversized_id: int | None = None


@dataclass
class Counts:
    broker_restarts: int = 0
    broker_kills: int = 0
    daemon_kills: int = 0
    daemon_terms: int = 0
    daemon_crashes: int = 0
    sigterm_unclean: int = 0
    sigterm_before_start: int = 0
    clock_moves: int = 0
    fault_switches: int = 0
    throttle_switches: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed
        self.rng = random.Random(self.seed)
        """The chaos plan: which action, when, with which parameters."""
        self.plant_rng = random.Random(f"{self.seed}/planted")
        """The planted sessions' details (drawn at moments that depend on real timing)."""
        self.workdir: Path = args.workdir
        self.clock = ClockLog()
        self.counts = Counts()
        self.planted = Planted()
        self.timeline: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.faults_on = False
        self.throttle_on = False
        self.broker: LocalBroker | None = None
        self.emulator: Emulator | None = None
        self.daemon: Daemon | None = None
        self.t0 = time.time()
        tag = uuid.uuid4().hex[:8]
        self.topics = {
            role: f"soak.{tag}.{role}" for role in ("completed", "started", "counts", "dlq")
        }

    # -- the log of what happened --

    def note(self, action: str, **details: Any) -> None:
        entry = {"t": round(time.time() - self.t0, 2), "action": action, **details}
        self.timeline.append(entry)
        shown = " ".join(f"{k}={v}" for k, v in details.items())
        say(f"t+{entry['t']:.0f}s {action} {shown}".rstrip())

    # -- set-up --

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        say(f"seed={self.seed} minutes={self.args.minutes:g} workdir={self.workdir}")
        self.broker = LocalBroker(workdir=self.workdir / "kafka")
        self.broker.start()
        say(f"broker at {self.broker.bootstrap}")
        asyncio.run(create_topics(self.broker.bootstrap, self.topics))
        self.emulator = Emulator(
            self.workdir, self.seed, self.args.traffic_rate, self.args.max_duration
        )
        self.emulator.clock_change(None, self.clock)
        # Date jitter on every answer, for the whole run.
        if "jitter" not in self.args.without:
            self.jitter()
        config = write_config(self.workdir, self.emulator.url, self.broker.bootstrap, self.topics)
        self.daemon = Daemon(self.workdir, config)
        self.add_long_sessions(4)
        self.daemon.start()
        self.note("daemon_start", first=True)

    def jitter(self) -> None:
        assert self.emulator is not None
        self.emulator.admin(
            "POST",
            "/admin/faults",
            {
                "calls": [
                    {
                        "kind": "date_skew",
                        "jitter": DATE_JITTER_S,
                        "seed": self.seed,
                        "count": 10**9,
                    }
                ]
            },
        )

    # -- planted sessions --

    def emu_now(self) -> float:
        return self.clock.emu_at(time.time())

    def add_sessions(self, entries: list[dict[str, Any]]) -> list[int]:
        assert self.emulator is not None
        answer = self.emulator.admin(
            "POST", "/admin/sessions", {"partnerId": PARTNER_ID, "sessions": entries}
        )
        return list(answer["ids"])

    def add_long_sessions(self, count: int) -> None:
        now = self.emu_now()
        entries = []
        for _ in range(count):
            start = now - self.plant_rng.uniform(0, 600)
            end = start + self.plant_rng.uniform(3600, 5 * 3600)
            entries.append({"startTime": iso(math.floor(start)), "endTime": iso(math.floor(end))})
        ids = self.add_sessions(entries)
        self.planted.long_ids += ids
        self.note("long_sessions", ids=ids)

    def add_bad_record(self) -> None:
        assert self.emulator is not None
        index = len(self.planted.bad)
        mutation = BAD_MUTATIONS[index % len(BAD_MUTATIONS)]
        # Starts a few seconds ahead: the mutation is in place before anyone can list it.
        start = math.floor(self.emu_now()) + 5
        entry: dict[str, Any] = {
            "startTime": iso(start),
            "endTime": iso(start + self.plant_rng.randint(20, 90)),
        }
        key = f"soak-bad-{self.seed}-{index}"
        entry["key"] = key
        (session_id,) = self.add_sessions([entry])
        self.emulator.admin(
            "POST", "/admin/faults", {"calls": [{"kind": mutation, "sessionIds": [session_id]}]}
        )
        self.planted.bad[session_id] = mutation
        self.planted.bad_keys[key] = session_id
        self.note("bad_record", id=session_id, mutation=mutation)

    def add_oversized_record(self) -> None:
        start = math.floor(self.emu_now()) + 2
        guests = [
            {
                "type": "guest",
                "name": f"Soak Guest {i:05d}",
                "email": f"soak.guest.{i:05d}@example.com",
                "phone": f"555-{i:07d}",
                "location": {"city": "Springfield", "region": "IL", "countryCode": "US"},
            }
            for i in range(OVERSIZED_GUESTS)
        ]
        entry = {
            "startTime": iso(start),
            "endTime": iso(start + self.plant_rng.randint(20, 60)),
            "guests": guests,
        }
        (session_id,) = self.add_sessions([entry])
        self.planted.oversized_id = session_id
        self.note("oversized_record", id=session_id, guests=OVERSIZED_GUESTS)

    # -- chaos --

    def run_chaos(self) -> None:
        assert self.daemon is not None
        chaos_seconds = self.args.minutes * 60
        chaos_start = time.time()
        deadline = chaos_start + chaos_seconds
        # Planted records at seeded moments in the first 60% of the run.
        without = self.args.without
        plants: list[tuple[float, Callable[[], None]]] = [
            (self.rng.uniform(0.05, 0.6) * chaos_seconds, self.add_bad_record)
            for _ in range(len(BAD_MUTATIONS))
        ]
        plants.append((self.rng.uniform(0.05, 0.5) * chaos_seconds, self.add_oversized_record))
        plants += [
            (self.rng.uniform(0.1, 0.6) * chaos_seconds, lambda: self.add_long_sessions(2))
            for _ in range(2)
        ]
        # Left out on request (the draws above are made all the same: the rest of the plan
        # stays the one of this seed).
        plants = [
            (at, plant)
            for at, plant in plants
            if not (
                ("bad" in without and plant == self.add_bad_record)
                or ("oversized" in without and plant == self.add_oversized_record)
            )
        ]
        plants.sort(key=lambda plant: plant[0])
        names = list(ACTIONS)
        weights = [ACTIONS[name] for name in names]
        next_action = self.rng.uniform(5, 10) + chaos_start
        while time.time() < deadline:
            self.check_daemon()
            elapsed = time.time() - chaos_start
            while plants and plants[0][0] <= elapsed:
                plants.pop(0)[1]()
            if time.time() >= next_action:
                action = self.rng.choices(names, weights)[0]
                if ACTION_GROUPS[action] in without:
                    self.run_skipped(action)
                else:
                    getattr(self, f"chaos_{action}")()
                next_action = time.time() + self.rng.expovariate(1 / self.args.chaos_every)
            time.sleep(0.25)
        for _at, plant in plants:  # a short run still gets every planted record
            plant()

    def run_skipped(self, action: str) -> None:
        """Draw what the action would have drawn, so the rest of the plan stays the same."""
        draws = {"broker_restart": 1, "broker_kill": 1, "daemon_kill": 1, "daemon_term": 1}
        for _ in range(draws.get(action, 0)):
            self.rng.uniform(0, 1)
        if action == "faults" and not self.faults_on:
            self.rng.uniform(0, 1)
            self.rng.randrange(1 << 30)
        elif action == "throttle" and not self.throttle_on:
            self.rng.uniform(0, 1)
        elif action == "clock":
            self.clock_draw()
        if action in ("faults", "throttle"):
            setattr(self, f"{action}_on", not getattr(self, f"{action}_on"))
        self.note("skipped", action=action)

    def check_daemon(self) -> None:
        assert self.daemon is not None
        code = self.daemon.exited()
        if code == 2:
            raise RuntimeError(f"the daemon refused its configuration; see {self.daemon.log_path}")
        if code is not None:
            self.counts.daemon_crashes += 1
            self.note("daemon_exited_by_itself", code=code)
            self.problems.append(f"the daemon exited by itself with code {code}")
            self.daemon.process = None
            time.sleep(1)
            self.daemon.start()

    def chaos_broker_restart(self) -> None:
        self._broker_down(kill=False)

    def chaos_broker_kill(self) -> None:
        self._broker_down(kill=True)

    def _broker_down(self, *, kill: bool) -> None:
        assert self.broker is not None
        down = self.rng.uniform(2, 20)
        if kill:
            self.broker.kill()
            self.counts.broker_kills += 1
        else:
            self.broker.stop()
        self.counts.broker_restarts += 1
        self.note("broker_kill" if kill else "broker_stop", down_s=round(down, 1))
        self.sleep_watching(down)
        started = time.monotonic()
        self.broker.start(timeout=180)
        self.note("broker_start", took_s=round(time.monotonic() - started, 1))

    def chaos_daemon_kill(self) -> None:
        assert self.daemon is not None
        pause = self.rng.uniform(0, 3)
        self.daemon.kill()
        self.counts.daemon_kills += 1
        self.note("daemon_sigkill", restart_after_s=round(pause, 1))
        time.sleep(pause)
        self.daemon.start()

    def chaos_daemon_term(self) -> None:
        assert self.daemon is not None
        pause = self.rng.uniform(0, 3)
        ready = self.daemon.ready()
        result = self.daemon.term(SHUTDOWN_TIMEOUT_S + 10)
        self.counts.daemon_terms += 1
        self.note(
            "daemon_sigterm",
            code=result.code,
            took_s=round(result.seconds, 1),
            hung=result.hung,
            ready=ready,
        )
        if not ready and result.code == -signal.SIGTERM:
            # Killed by the signal before it had logged its start: nothing was running yet
            # (Python's default action, before the daemon's handlers are installed).
            self.counts.sigterm_before_start += 1
        elif result.hung or result.code != 0:
            self.counts.sigterm_unclean += 1
            self.problems.append(
                f"SIGTERM at t+{time.time() - self.t0:.0f}s: exit code {result.code}"
                f"{' (hung, killed)' if result.hung else ''} after {result.seconds:.1f}s"
            )
        time.sleep(pause)
        self.daemon.start()

    def chaos_faults(self) -> None:
        assert self.emulator is not None
        if self.faults_on:
            self.emulator.admin("POST", "/admin/faults", {"rate": None})
            self.note("faults_off")
        else:
            p = round(self.rng.uniform(0.1, 0.5), 2)
            self.emulator.admin(
                "POST",
                "/admin/faults",
                {
                    "rate": {
                        "p": p,
                        "kinds": FAULT_KINDS,
                        "seed": self.rng.randrange(1 << 30),
                        "params": {"delay": 1.5, "retryAfter": 1},
                    }
                },
            )
            self.note("faults_on", p=p)
        self.faults_on = not self.faults_on
        self.counts.fault_switches += 1

    def chaos_throttle(self) -> None:
        assert self.emulator is not None
        if self.throttle_on:
            self.emulator.admin("POST", "/admin/service", {"maxConcurrent": 0, "latency": 0})
            self.note("throttle_off")
        else:
            latency = round(self.rng.uniform(0.05, 0.3), 3)
            self.emulator.admin(
                "POST",
                "/admin/service",
                {"maxConcurrent": 1, "latency": latency, "throttle503Share": 0.3},
            )
            self.note("throttle_on", max_concurrent=1, latency_s=latency)
        self.throttle_on = not self.throttle_on
        self.counts.throttle_switches += 1

    def chaos_clock(self) -> None:
        assert self.emulator is not None
        seconds = self.clock_draw()
        self.emulator.clock_change({"advance": round(seconds, 1)}, self.clock)
        self.counts.clock_moves += 1
        self.note("clock_move", seconds=round(seconds, 1))

    def clock_draw(self) -> float:
        """A clock move: mostly forward, by up to 40 minutes; sometimes back, by up to 90 s."""
        if self.rng.random() < 0.15:
            return -self.rng.uniform(10, 90)
        return self.rng.choice([self.rng.uniform(30, 300), self.rng.uniform(300, 2400)])

    def sleep_watching(self, seconds: float) -> None:
        """Sleep, noticing a daemon that ends by itself meanwhile."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.check_daemon()
            time.sleep(min(0.25, max(0.0, deadline - time.time())))

    # -- the end: calm, catch up, compare --

    def calm_down(self) -> None:
        assert self.emulator is not None and self.broker is not None
        if not self.broker.running:
            self.broker.start(timeout=180)
            self.note("broker_start", final=True)
        self.check_daemon()
        self.emulator.admin("POST", "/admin/faults", {"rate": None})
        self.emulator.admin("POST", "/admin/service", {"maxConcurrent": 0, "latency": 0})
        self.emulator.admin("POST", "/admin/live", {"rate": 0})
        now = parse_instant(self.emulator.admin("GET", "/admin/clock")["now"])
        every = self.emulator.admin(
            "GET", f"/admin/sessions?partnerId={PARTNER_ID}&state=all&records=false", timeout=300
        )["sessions"]
        # Open, or not started yet (planted a few seconds ahead).
        active = [s for s in every if not s["ended"]]
        ends = [parse_instant(s["endTime"]) for s in active if s.get("endTime")]
        open_ended = [s["id"] for s in active if not s.get("endTime")]
        for session_id in open_ended:  # none are planted; live traffic always plans an end
            self.emulator.admin("POST", f"/admin/sessions/{session_id}/end", {})
        advance = max(ends, default=now) - now + 5
        if advance > 0:
            self.emulator.clock_change({"advance": round(advance, 1)}, self.clock)
            self.counts.clock_moves += 1
        self.note(
            "calm",
            open_sessions=len(active),
            final_clock_advance_s=round(max(advance, 0), 1),
        )

    def expectations(self) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], float]:
        """(sessions expected on the completed topic, planted ones expected on the dead-letter
        topic, the emulated instant from which the daemon is responsible)."""
        assert self.emulator is not None and self.daemon is not None
        ended = self.emulator.admin(
            "GET",
            f"/admin/sessions?partnerId={PARTNER_ID}&state=ended&records=false",
            timeout=300,
        )["sessions"]
        responsible_from = self.clock.emu_at(self.daemon.starts[0]) - START_LOOKBACK_S
        dead = set(self.planted.bad)
        if self.planted.oversized_id is not None:
            dead.add(self.planted.oversized_id)
        expected: dict[int, dict[str, Any]] = {}
        expected_dead: dict[int, dict[str, Any]] = {}
        for view in ended:
            if parse_instant(view["startTime"]) < responsible_from:
                continue
            (expected_dead if view["id"] in dead else expected)[view["id"]] = view
        return expected, expected_dead, responsible_from

    def found(
        self, records: list[Record]
    ) -> tuple[dict[int, list[Record]], dict[int, list[Record]], list[Record]]:
        """Completed records by session id, dead letters by session id, unmatched dead letters."""
        completed: dict[int, list[Record]] = defaultdict(list)
        dead: dict[int, list[Record]] = defaultdict(list)
        unmatched: list[Record] = []
        for record in records:
            if record.topic == self.topics["completed"]:
                session_id = _int(record.key)
                if session_id is None:
                    value = record.json()
                    session = value.get("session") if isinstance(value, dict) else None
                    session_id = _int(session.get("id")) if isinstance(session, dict) else None
                if session_id is not None:
                    completed[session_id].append(record)
            elif record.topic == self.topics["dlq"]:
                session_id = _int(record.key)
                if session_id is None:
                    value = record.json()
                    if isinstance(value, dict):
                        session_id = _int(value.get("id"))
                        if session_id is None:
                            session_id = self.planted.bad_keys.get(str(value.get("key")))
                if session_id is None:
                    unmatched.append(record)
                else:
                    dead[session_id].append(record)
        return completed, dead, unmatched

    def settle(self) -> list[Record]:
        """Wait until everything expected is on Kafka (bounded), then read every topic."""
        assert self.broker is not None
        started = time.monotonic()
        quiet_from: float | None = None
        bootstrap = self.broker.bootstrap
        while True:
            self.check_daemon()
            expected, expected_dead, _ = self.expectations()
            records = asyncio.run(
                read_topics(bootstrap, [self.topics["completed"], self.topics["dlq"]])
            )
            completed, dead, _ = self.found(records)
            missing = [i for i in expected if i not in completed]
            missing_dead = [i for i in expected_dead if i not in dead]
            waited = time.monotonic() - started
            if not missing and not missing_dead:
                quiet_from = quiet_from or time.monotonic()
                if time.monotonic() - quiet_from >= 2 * RECONCILE_INTERVAL_S:
                    self.note("settled", waited_s=round(waited, 1))
                    break
            elif waited > self.args.settle:
                self.note(
                    "settle_timeout",
                    waited_s=round(waited, 1),
                    missing=len(missing),
                    missing_dead_letters=len(missing_dead),
                )
                break
            else:
                say(f"settling: {len(missing)} sessions, {len(missing_dead)} dead letters to go")
            time.sleep(5)
        return asyncio.run(read_topics(bootstrap, list(self.topics.values())))

    def verdict(self, records: list[Record]) -> dict[str, Any]:
        assert self.daemon is not None
        expected, expected_dead, responsible_from = self.expectations()
        completed, dead, unmatched = self.found(records)
        analysed_at = time.time()
        lost = sorted(i for i in expected if i not in completed)
        same_ce_id = 0
        other_ce_id: dict[int, list[str]] = {}
        for session_id, found in completed.items():
            ids = Counter(r.headers.get("ce_id", "") for r in found)
            same_ce_id += sum(n - 1 for n in ids.values())
            if len(ids) > 1:
                other_ce_id[session_id] = sorted(ids)
        bad_on_completed = sorted(i for i in expected_dead if i in completed)
        unexpected = sorted(i for i in completed if i not in expected and i not in expected_dead)
        dead_found = sorted(i for i in expected_dead if i in dead)
        dead_missing = sorted(i for i in expected_dead if i not in dead)
        dead_extra = sorted(i for i in dead if i not in expected_dead)
        dead_duplicates = sum(len(dead[i]) - 1 for i in dead_found)
        append_time = all(r.timestamp_type == 1 for r in records)

        # Delays of the sessions that ended while the daemon ran (not of the backlog it found
        # at its first start).
        first_start = self.clock.emu_at(self.daemon.starts[0])
        delays: list[tuple[float, int]] = []
        details: dict[int, dict[str, Any]] = {}
        # Dead letters are left out: a bad record is also dead-lettered when the open-sessions
        # listing shows it, before it ends.
        for session_id, view in expected.items():
            found = completed.get(session_id)
            end = parse_instant(view["endTime"])
            if not found or end < first_start:
                continue
            first_vis, since = self.clock.visible(end, analysed_at)
            arrived = min(r.timestamp_ms for r in found) / 1000
            reference = since if since is not None and arrived >= since else first_vis
            if reference is not None:
                delays.append((arrived - reference, session_id))
                details[session_id] = {
                    "id": session_id,
                    "start": view["startTime"],
                    "end": view["endTime"],
                    "visible_at_t": round(reference - self.t0, 2),
                    "arrived_at_t": round(arrived - self.t0, 2),
                    "delay_s": round(arrived - reference, 2),
                    "topic": found[0].topic,
                }
        delays.sort()
        worst = delays[-1] if delays else (0.0, None)
        values = [d for d, _ in delays]

        sigterm = self.daemon.term(SHUTDOWN_TIMEOUT_S + 10)
        self.note("final_sigterm", code=sigterm.code, took_s=round(sigterm.seconds, 1))
        if sigterm.hung or sigterm.code != 0:
            self.counts.sigterm_unclean += 1
            self.problems.append(
                f"final SIGTERM: exit code {sigterm.code}"
                f"{' (hung, killed)' if sigterm.hung else ''} after {sigterm.seconds:.1f}s"
            )
        if lost:
            self.problems.append(f"{len(lost)} sessions lost")
        if other_ce_id:
            self.problems.append(f"{len(other_ce_id)} sessions published under several ce_id")
        if dead_missing:
            self.problems.append(f"{len(dead_missing)} dead letters missing: {dead_missing}")
        if bad_on_completed:
            self.problems.append(f"bad records on the completed topic: {bad_on_completed}")
        if self.args.max_delay and worst[0] > self.args.max_delay:
            late = sum(1 for d, _ in delays if d > self.args.max_delay)
            self.problems.append(
                f"{late} sessions delivered later than --max-delay {self.args.max_delay:g}s "
                f"(worst {worst[0]:.1f}s, session {worst[1]})"
            )
        passed = not self.problems
        topics_count = Counter(r.topic for r in records)
        return {
            "passed": passed,
            "seed": self.seed,
            "minutes": self.args.minutes,
            "without": sorted(self.args.without),
            "sessions": len(expected),
            "lost": len(lost),
            "lost_ids": lost[:200],
            "lost_sessions": [expected[i] for i in lost[:50]],
            "duplicates_same_ce_id": same_ce_id,
            "duplicates_other_ce_id": len(other_ce_id),
            "duplicates_other_ce_id_detail": dict(list(other_ce_id.items())[:50]),
            "dead_letters_expected": len(expected_dead),
            "dead_letters_found": len(dead_found),
            "dead_letters_missing": dead_missing,
            "dead_letter_duplicates": dead_duplicates,
            "dead_letters_other": len(dead_extra) + len(unmatched),
            "bad_records_on_completed": bad_on_completed,
            "unexpected_completed": len(unexpected),
            "worst_delay_s": round(worst[0], 1),
            "worst_delay_session": worst[1],
            "delays_measured": len(values),
            "worst_delays": [details[i] for _d, i in reversed(delays[-10:])],
            "delay_p50_s": round(statistics.median(values), 2) if values else None,
            "delay_p99_s": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2)
            if values
            else None,
            "record_timestamps": "LogAppendTime" if append_time else "mixed (see topics)",
            "records_per_topic": {t: topics_count.get(t, 0) for t in self.topics.values()},
            "responsible_from": iso(responsible_from),
            "planted": asdict(self.planted),
            "counts": asdict(self.counts),
            "problems": self.problems,
        }

    def daemon_evidence(self) -> dict[str, Any]:
        assert self.daemon is not None
        entries = log_entries(self.daemon.log_path)
        notable = [
            e
            for e in entries
            if str(e.get("level", "")).lower() in ("warning", "error", "critical")
        ]
        by_event = Counter(f"{e.get('level')}: {e.get('event')}" for e in notable)
        text = (
            self.daemon.log_path.read_text(errors="replace")
            if self.daemon.log_path.exists()
            else ""
        )
        markers = {
            marker: text.count(marker)
            for marker in (
                "OutOfOrderSequenceNumber",
                "UnknownProducerId",
                "MessageSizeTooLarge",
                "Traceback",
                "KafkaTimeoutError",
            )
        }
        return {
            "log": str(self.daemon.log_path),
            "starts": len(self.daemon.starts),
            "warnings_and_errors": dict(by_event.most_common(25)),
            "markers": markers,
            "last_errors": [json.dumps(e)[:600] for e in notable[-15:]],
        }

    def metrics(self) -> dict[str, float]:
        assert self.daemon is not None
        port = self.daemon.metrics_port()
        if port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError):
            return {}
        wanted = (
            "glance_poller_cursor_lag_seconds",
            "glance_poller_produce_errors_total",
            "glance_poller_dead_letters_total",
            "glance_poller_events_produced_total",
            "glance_poller_unacknowledged_events",
        )
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(wanted):
                series, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    found[series] = float(value)
        return found

    def cleanup(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
        if self.emulator is not None:
            self.emulator.stop()
        if self.broker is not None:
            self.broker.cleanup()


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def verdict_line(result: dict[str, Any]) -> str:
    counts = result["counts"]
    fields = {
        "seed": result["seed"],
        "minutes": f"{result['minutes']:g}",
        "sessions": result["sessions"],
        "lost": result["lost"],
        "duplicates_same_ce_id": result["duplicates_same_ce_id"],
        "duplicates_other_ce_id": result["duplicates_other_ce_id"],
        "dead_letters_expected": result["dead_letters_expected"],
        "found": result["dead_letters_found"],
        "worst_delay_s": result["worst_delay_s"],
        "broker_restarts": counts["broker_restarts"],
        "broker_kills": counts["broker_kills"],
        "daemon_kills": counts["daemon_kills"],
        "daemon_terms": counts["daemon_terms"],
        "daemon_crashes": counts["daemon_crashes"],
        "sigterm_unclean": counts["sigterm_unclean"],
        "sigterm_before_start": counts["sigterm_before_start"],
        "clock_moves": counts["clock_moves"],
        "fault_switches": counts["fault_switches"],
        "throttle_switches": counts["throttle_switches"],
    }
    if result.get("without"):
        fields["without"] = ",".join(result["without"])
    status = "PASS" if result["passed"] else "FAIL"
    return f"soak verdict: {status} " + " ".join(f"{k}={v}" for k, v in fields.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES", "10")),
        help="how long the chaos lasts (default $SOAK_MINUTES or 10); the catch-up and the "
        "comparison come after",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the plan's seed (default: random, printed)"
    )
    parser.add_argument("--report", type=Path, help="write the full result here as JSON")
    parser.add_argument(
        "--workdir", type=Path, help="logs, state and broker (default .run/soak-<seed>-<time>)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=240.0,
        help="at most this many seconds for the daemon to catch up after the chaos (default 240)",
    )
    parser.add_argument(
        "--chaos-every",
        type=float,
        default=15.0,
        help="mean seconds between chaos actions (default 15)",
    )
    parser.add_argument(
        "--traffic-rate",
        type=float,
        default=6.0,
        help="live sessions starting per emulated minute (default 6)",
    )
    parser.add_argument(
        "--max-duration",
        type=int,
        default=4 * 3600,
        help="longest live session, in emulated seconds (default 4 h)",
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also fail when a session's delivery delay exceeds this (default 0: delays are "
        "reported, not judged)",
    )
    parser.add_argument(
        "--without",
        type=lambda text: {part.strip() for part in text.split(",") if part.strip()},
        default=set(),
        metavar="PARTS",
        help=f"leave parts out, to find what a failure needs (comma-separated: "
        f"{','.join(WITHOUT)}); the verdict says so. Default: nothing left out",
    )
    args = parser.parse_args(argv)
    unknown = args.without - set(WITHOUT)
    if unknown:
        parser.error(f"--without: unknown parts {sorted(unknown)}; known: {','.join(WITHOUT)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.workdir is None:
        args.workdir = REPO / ".run" / f"soak-{args.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    soak = Soak(args)
    result: dict[str, Any]
    try:
        try:
            soak.start()
        except (BrokerFailed, RuntimeError, OSError) as exc:
            say(f"could not start: {exc}")
            print(f"soak verdict: ERROR seed={args.seed} minutes={args.minutes:g} setup failed")
            return 2
        soak.run_chaos()
        soak.calm_down()
        records = soak.settle()
        metrics = soak.metrics()
        result = soak.verdict(records)
        result["daemon_metrics_at_end"] = metrics
        result["daemon"] = soak.daemon_evidence()
        result["timeline"] = soak.timeline
        result["clock_segments"] = [asdict(s) for s in soak.clock.segments]
        result["workdir"] = str(args.workdir)
    except Exception:
        traceback.print_exc()
        soak.cleanup()
        print(f"soak verdict: ERROR seed={args.seed} minutes={args.minutes:g} the soak failed")
        return 2
    soak.cleanup()
    if args.report is not None:
        args.report.write_text(json.dumps(result, indent=2, default=str))
    say(f"daemon log: {result['daemon']['log']} ({result['daemon']['starts']} starts)")
    for name, count in result["daemon"]["warnings_and_errors"].items():
        say(f"  {count:5d} x {name}")
    say(f"markers in the daemon log: {result['daemon']['markers']}")
    say(
        f"delays: p50 {result['delay_p50_s']} s, p99 {result['delay_p99_s']} s, worst "
        f"{result['worst_delay_s']} s (session {result['worst_delay_session']}); record "
        f"timestamps: {result['record_timestamps']}"
    )
    for problem in result["problems"]:
        say(f"PROBLEM: {problem}")
    if result["lost"]:
        say(f"lost (first ones): {result['lost_sessions'][:10]}")
    print(verdict_line(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
