"""What the benchmarks share: the plan, the context, the realistic service, and reading a
running daemon's /metrics."""

from __future__ import annotations

import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from local_broker import LocalBroker
from prometheus_client.parser import text_string_to_metric_families

from bench import procs

MIB = 1024.0  # ru_maxrss and VmRSS are in KiB

# The realistic service (issue 16): every call 400 ms plus 0.1 ms per record, at most 4 calls of
# a partner at once (more are refused with 429).
UPSTREAM_LATENCY = "400ms"
UPSTREAM_LATENCY_PER_RECORD = "0.1ms"
UPSTREAM_MAX_CONCURRENT = 4
REALISTIC = (
    "--latency", UPSTREAM_LATENCY,
    "--latency-per-record", UPSTREAM_LATENCY_PER_RECORD,
    "--max-concurrent", str(UPSTREAM_MAX_CONCURRENT),
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    sessions: int
    upstream_sessions: int
    runs: int
    throughput_runs: int
    memory_sizes: tuple[int, ...]
    memory_large_runs: int
    latency_rate: float  # sessions ending per second
    latency_warmup: float
    latency_window: float
    latency_started: float  # the started stream's interval in the latency runs; 0: off
    late_rate: float  # late completions per second, per daemon
    late_window: float
    late_reconcile: float  # the reconcile interval of the late runs (seconds)
    many_partners: int
    many_warmup: float
    many_window: float
    idle_warmup: float
    idle_window: float
    idle_interval: float
    commit_sizes: tuple[int, int]
    commits: int


@dataclass
class Context:
    plan: Plan
    workdir: Path
    broker: LocalBroker | None
    # The benchmarks of this run so far (the upstream limit takes the send() ceiling's).
    done: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    @property
    def broker_pid(self) -> int | None:
        process = self.broker.process if self.broker else None
        return process.pid if process else None

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def target(name: str, text: str, measured: float, passed: bool) -> dict[str, Any]:
    return {"name": name, "target": text, "measured": measured, "pass": bool(passed)}


def cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return procs.cpu_seconds(pid)
    except (OSError, ValueError):
        return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


# -- a running daemon's /metrics ---------------------------------------------------------------


def metrics_port(log_path: Path, timeout: float = 60.0) -> int:
    """The daemon's metrics port, from its "glance-poller started" log line."""
    deadline = time.monotonic() + timeout
    while True:
        if log_path.exists():
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"glance-poller started"' in line:
                    port = orjson.loads(line).get("metrics_port")
                    if port:
                        return int(port)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no metrics port in {log_path}")
        time.sleep(0.2)


Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    """Every sample of /metrics: (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """A metric's samples summed per value of ``label``."""
    found: dict[str, float] = {}
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            key = sample_labels.get(label, "")
            found[key] = found.get(key, 0.0) + value
    return found
