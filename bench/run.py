"""The benchmark harness (issue 6): `make bench`, or `python bench/run.py --help`.

Against a real local Kafka broker and the bundled emulator, each figure the median of several
runs: backfill throughput beside a bare-producer ceiling, live latency, the backfill's peak
RSS, idle CPU, and the cost of a state commit. Results are merged, under ``--label``, into
bench/results.json, and the table in bench/README.md is regenerated from that file.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "kafka")]

import orjson  # noqa: E402
from local_broker import LocalBroker  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench import commit as commit_bench  # noqa: E402
from bench import kafka_io, procs, report  # noqa: E402
from bench.procs import Emulator, Topics, iso, say, write_config  # noqa: E402
from poller.settings import load_config  # noqa: E402

BENCHMARKS = ("throughput", "upstream", "latency", "memory", "idle", "commit")
# Run order: the quick ones first, the long memory run last.
ORDER = ("commit", "throughput", "upstream", "latency", "idle", "memory")
MIB = 1024.0  # ru_maxrss and VmRSS are in KiB

# Targets of the issue.
UPSTREAM_RATIO = 0.8  # backfill / (concurrency x page / page latency), against a WAN service
RECORDS_PER_SESSION = 1.5  # upstream records read per session delivered, live
# The realistic service: every call 400 ms plus 0.1 ms per record, at most 4 calls at once.
UPSTREAM_LATENCY = "400ms"
UPSTREAM_LATENCY_PER_RECORD = "0.1ms"
UPSTREAM_MAX_CONCURRENT = 4
UPSTREAM_CONCURRENCIES = (1, 4)
LATENCY_SLACK_MS = 250.0
MEMORY_PEAK_MIB = 150.0
MEMORY_GROWTH = 0.20
IDLE_PERCENT = 1.0
COMMIT_RATIO = 2.0


@dataclass(frozen=True)
class Plan:
    sessions: int
    upstream_sessions: int
    runs: int
    # The ceiling drifts by up to 15 % from run to run on a shared 2-core machine, so the
    # throughput ratio takes more runs than the other figures.
    throughput_runs: int
    memory_sizes: tuple[int, ...]
    memory_large_runs: int
    latency_rate: float  # sessions ending per second
    latency_warmup: float
    latency_window: float
    poll_interval: float
    latency_started: float  # the started stream's interval in the latency runs; 0: off
    idle_warmup: float
    idle_window: float
    idle_interval: float
    commit_sizes: tuple[int, int]
    commits: int


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        sessions=args.sessions or (20_000 if quick else 200_000),
        upstream_sessions=20_000 if quick else 200_000,
        runs=args.runs or (1 if quick else 3),
        throughput_runs=args.runs or (1 if quick else 5),
        memory_sizes=(100_000, 200_000) if quick else (100_000, 1_000_000),
        memory_large_runs=1,
        latency_rate=50.0,
        latency_warmup=10.0 if quick else 15.0,
        latency_window=20.0 if quick else 60.0,
        poll_interval=1.0,
        latency_started=args.latency_started,
        idle_warmup=10.0,
        idle_window=20.0 if quick else 60.0,
        idle_interval=5.0,
        commit_sizes=(1_000, 200_000),
        commits=300,
    )


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


# -- 1. backfill throughput and its ceiling ----------------------------------------------------


def bench_throughput(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    workdir = ctx.dir("throughput")
    clock = procs.frozen_clock()
    since, until = procs.backfill_range(clock)
    say(f"throughput: emulator with {plan.sessions:,} completed sessions")
    emulator = Emulator(workdir, "--clock-start", iso(clock), "--clock-speed", "0")
    try:
        emulator.load_completed(plan.sessions, since, until)
        runs: list[dict[str, Any]] = []
        records: list[kafka_io.Record] = []
        kafka_settings = None
        for index in range(plan.throughput_runs):
            run: dict[str, Any] = {"run": index}
            # Alternate the order, so that neither always meets the broker in the same state.
            order: tuple[str, ...] = ("backfill", "ceiling", "ceiling_batched")
            if index % 2 and records:
                order = ("ceiling_batched", "ceiling", "backfill")
            run["order"] = list(order)
            for step in order:
                if step == "backfill":
                    run["backfill"], config = _backfill_once(
                        ctx, emulator, workdir / f"run-{index}", since, until
                    )
                    if not records:
                        topic = run["backfill"]["topic"]
                        say(f"  reading the {run['backfill']['events']:,} events back")
                        records = asyncio.run(kafka_io.read_all(ctx.bootstrap, topic))
                        # Out of the collector's way, as the daemon's start-up objects are:
                        # otherwise its full collections re-scan these 200,000 records
                        # (1.6 million objects) while the ceiling runs, and it varied by 2x.
                        gc.collect()
                        gc.freeze()
                        kafka_settings = load_config(config, need_credentials=False).settings.kafka
                        run["backfill"]["event_shape"] = _event_shape(records)
                else:
                    assert kafka_settings is not None
                    run[step] = _ceiling_once(
                        ctx, kafka_settings, records, batched=step == "ceiling_batched"
                    )
            if run["backfill"]["events"] != plan.sessions:
                say(
                    f"  WARNING: the backfill put {run['backfill']['events']:,} events on its "
                    f"topic for {plan.sessions:,} sessions"
                )
            run["ratio"] = round(run["backfill"]["eps"] / run["ceiling"]["eps"], 3)
            run["ratio_batched"] = round(run["backfill"]["eps"] / run["ceiling_batched"]["eps"], 3)
            say(
                f"  run {index + 1}/{plan.throughput_runs}: "
                f"backfill {run['backfill']['eps']:,.0f} ev/s, "
                f"ceiling {run['ceiling']['eps']:,.0f} ev/s (ratio {run['ratio']:.2f}), "
                f"batched ceiling {run['ceiling_batched']['eps']:,.0f} ev/s "
                f"(ratio {run['ratio_batched']:.2f})"
            )
            runs.append(run)
    finally:
        emulator.stop()
    backfill_eps = median([r["backfill"]["eps"] for r in runs])
    ceiling_eps = median([r["ceiling"]["eps"] for r in runs])
    ratio = backfill_eps / ceiling_eps
    batched_eps = median([r["ceiling_batched"]["eps"] for r in runs])
    ratio_batched = backfill_eps / batched_eps
    return {
        "parameters": {
            "sessions": plan.sessions,
            "runs": plan.throughput_runs,
            "page_size": procs.PAGE_SIZE,
            "range": [iso(since), iso(until)],
            "kafka": _kafka_settings_view(kafka_settings),
        },
        "runs": runs,
        "median": {
            "backfill_eps": round(backfill_eps, 1),
            "ceiling_eps": round(ceiling_eps, 1),
            "ratio": round(ratio, 3),
            "ratio_of_runs": round(median([r["ratio"] for r in runs]), 3),
            "backfill_seconds": round(median([r["backfill"]["seconds"] for r in runs]), 2),
            "ceiling_seconds": round(median([r["ceiling"]["seconds"] for r in runs]), 2),
            "ceiling_batched_eps": round(batched_eps, 1),
            "ratio_batched": round(ratio_batched, 3),
        },
        # The 0.8x-of-send() target is retired (issue 16): what users feel is bound by the
        # upstream; the ratios stay as figures ("upstream" has the target that applies).
        "targets": [],
    }


def _kafka_settings_view(settings: Any) -> dict[str, Any] | None:
    if settings is None:
        return None
    keys = ("linger_ms", "max_batch_size", "compression_type", "request_timeout_ms")
    return {key: getattr(settings, key) for key in keys} | {"acks": "all", "idempotent": True}


def _event_shape(records: list[kafka_io.Record]) -> dict[str, Any]:
    sample = records[:: max(1, len(records) // 2000)]
    guests = [len(orjson.loads(value)["session"].get("guests") or []) for _k, value, _h in sample]
    return {
        "mean_value_bytes": round(statistics.fmean(len(v) for _k, v, _h in records), 1),
        "mean_headers_bytes": round(
            statistics.fmean(sum(len(k) + len(v) for k, v in h) for _k, _v, h in sample), 1
        ),
        "mean_guests": round(statistics.fmean(guests), 2),
    }


def _backfill_once(
    ctx: Context,
    emulator: Emulator,
    workdir: Path,
    since: datetime,
    until: datetime,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], Path]:
    """One timed `glance-poller backfill` of [since, until) into fresh topics and state."""
    topics = Topics.unique("backfill")
    # Its topics exist before the clock starts, as the ceiling's does: creating one takes the
    # broker a few hundred milliseconds, which neither side's rate should include.
    asyncio.run(kafka_io.create_topics(ctx.bootstrap, [topics.completed, topics.dlq]))
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(
        workdir / "poller.toml",
        emulator_url=emulator.url,
        bootstrap=ctx.bootstrap,
        topics=topics,
        state_path=workdir / "state.sqlite3",
        overrides=overrides,
    )
    command = [
        "backfill",
        "--config", str(config),
        "--since", iso(since),
        "--until", iso(until),
        "--state", str(workdir / "backfill.sqlite3"),
    ]  # fmt: skip
    cpu_before = (cpu_of(emulator.pid), cpu_of(ctx.broker_pid))
    exited = procs.run_measured(command, workdir / "backfill.log", timeout=3600)
    cpu_after = (cpu_of(emulator.pid), cpu_of(ctx.broker_pid))
    if exited.returncode != 0:
        raise RuntimeError(
            f"backfill exited with {exited.returncode}; see {workdir / 'backfill.log'}"
        )
    events = asyncio.run(kafka_io.count(ctx.bootstrap, topics.completed))
    dead = asyncio.run(kafka_io.count(ctx.bootstrap, topics.dlq))
    result = {
        "topic": topics.completed,
        "events": events,
        "dead_letters": dead,
        "seconds": round(exited.seconds, 3),
        "eps": round(events / exited.seconds, 1),
        "peak_rss_mib": round(exited.max_rss_kb / MIB, 1),
        "cpu_seconds": {
            "backfill": round(exited.cpu_seconds, 2),
            "emulator": cpu_delta(cpu_before[0], cpu_after[0]),
            "broker": cpu_delta(cpu_before[1], cpu_after[1]),
        },
    }
    return result, config


def _ceiling_once(
    ctx: Context, settings: Any, records: list[kafka_io.Record], *, batched: bool
) -> dict[str, Any]:
    topic = Topics.unique("ceiling").completed
    usage_before = os.times()
    broker_before = cpu_of(ctx.broker_pid)
    produce = kafka_io.produce_all_batched if batched else kafka_io.produce_all
    seconds = asyncio.run(produce(settings, topic, records))
    usage_after = os.times()
    broker_after = cpu_of(ctx.broker_pid)
    events = asyncio.run(kafka_io.count(ctx.bootstrap, topic))
    if events != len(records):
        raise RuntimeError(f"the ceiling sent {len(records)} events but {events} are on {topic}")
    own = (usage_after.user - usage_before.user) + (usage_after.system - usage_before.system)
    return {
        "topic": topic,
        "events": events,
        "seconds": round(seconds, 3),
        "eps": round(events / seconds, 1),
        "cpu_seconds": {
            "producer": round(own, 2),
            "broker": cpu_delta(broker_before, broker_after),
        },
    }


# -- 1b. backfill against a WAN service -------------------------------------------------------


def bench_upstream(ctx: Context) -> dict[str, Any]:
    """The backfill against the emulator as the service across the internet: every call 400 ms
    plus 0.1 ms per record, at most 4 calls of a partner at once (more are refused, 429). At
    concurrency 1 and 4, beside the upstream-bound limit: concurrency x page size / the measured
    latency of one full page (or the `send()` ceiling of this run's throughput benchmark, if
    lower)."""
    plan = ctx.plan
    workdir = ctx.dir("upstream")
    clock = procs.frozen_clock()
    since, until = procs.backfill_range(clock)
    say(
        f"upstream: emulator with {plan.upstream_sessions:,} completed sessions, latency "
        f"{UPSTREAM_LATENCY} + {UPSTREAM_LATENCY_PER_RECORD}/record, "
        f"at most {UPSTREAM_MAX_CONCURRENT} calls at once"
    )
    emulator = Emulator(workdir, "--clock-start", iso(clock), "--clock-speed", "0")
    try:
        emulator.load_completed(plan.upstream_sessions, since, until)
        emulator.admin(
            "POST",
            "/admin/service",
            {
                "latency": UPSTREAM_LATENCY,
                "latencyPerRecord": UPSTREAM_LATENCY_PER_RECORD,
                "maxConcurrent": UPSTREAM_MAX_CONCURRENT,
            },
        )
        page_seconds = _page_latency(emulator, since, until)
        say(f"  one full page of {procs.PAGE_SIZE:,}: {page_seconds * 1000:,.0f} ms (median of 5)")
        runs: list[dict[str, Any]] = []
        for index in range(plan.runs):
            run: dict[str, Any] = {"run": index}
            order = UPSTREAM_CONCURRENCIES if index % 2 == 0 else UPSTREAM_CONCURRENCIES[::-1]
            for concurrency in order:
                emulator.admin("POST", "/admin/stats/reset")
                result, _config = _backfill_once(
                    ctx,
                    emulator,
                    workdir / f"run-{index}-c{concurrency}",
                    since,
                    until,
                    overrides={"backfill": {"concurrency": concurrency}},
                )
                result.update(_backfill_summary(workdir / f"run-{index}-c{concurrency}"))
                result["upstream"] = emulator.admin("GET", "/admin/stats")["partners"].get(
                    str(procs.PARTNER_ID), {}
                )
                run[f"c{concurrency}"] = result
                say(
                    f"  run {index + 1}/{plan.runs}, concurrency {concurrency}: "
                    f"{result['eps']:,.0f} ev/s in {result['seconds']:.1f} s, "
                    f"{result.get('pages', '?')} pages, throttled {result.get('throttled', '?')}"
                )
            runs.append(run)
    finally:
        emulator.stop()
    throughput = ctx.done.get("throughput", {}).get("median", {})
    ceiling = throughput.get("ceiling_eps")
    median_figures: dict[str, Any] = {"page_seconds": round(page_seconds, 3)}
    targets = []
    for concurrency in UPSTREAM_CONCURRENCIES:
        eps = median([r[f"c{concurrency}"]["eps"] for r in runs])
        bound = concurrency * procs.PAGE_SIZE / page_seconds
        limit = min(bound, ceiling) if ceiling else bound
        ratio = eps / limit
        median_figures |= {
            f"eps_c{concurrency}": round(eps, 1),
            f"limit_c{concurrency}": round(limit, 1),
            f"ratio_c{concurrency}": round(ratio, 3),
        }
        targets.append(
            target(
                f"upstream_ratio_c{concurrency}",
                f"concurrency {concurrency}: backfill ≥ {UPSTREAM_RATIO}x "
                "(concurrency x page / page latency, or the send() ceiling if lower)",
                round(ratio, 3),
                ratio >= UPSTREAM_RATIO,
            )
        )
    median_figures["send_ceiling_eps"] = ceiling
    return {
        "parameters": {
            "sessions": plan.upstream_sessions,
            "runs": plan.runs,
            "page_size": procs.PAGE_SIZE,
            "range": [iso(since), iso(until)],
            "latency": UPSTREAM_LATENCY,
            "latency_per_record": UPSTREAM_LATENCY_PER_RECORD,
            "max_concurrent": UPSTREAM_MAX_CONCURRENT,
            "concurrencies": list(UPSTREAM_CONCURRENCIES),
        },
        "runs": runs,
        "median": median_figures,
        "targets": targets,
    }


def _page_latency(emulator: Emulator, since: datetime, until: datetime) -> float:
    """The median time of five full pages (``nResults`` = the page size), one at a time."""
    body = orjson.dumps(
        {
            "partnerId": procs.PARTNER_ID,
            "apiKey": procs.API_KEY,
            "startRange": iso(since),
            "endRange": iso(until),
            "sessionKey": "",
            "nResults": procs.PAGE_SIZE,
            "nextId": 0,
        }
    )
    url = f"{emulator.url}/services/activityservice.asmx/PartnerCompletedSessions"
    seconds = []
    for _ in range(5):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = orjson.loads(response.read())
        seconds.append(time.perf_counter() - started)
        served = sum(len(user.get("sessions") or []) for user in answer["d"]["users"])
        if served != procs.PAGE_SIZE:
            raise RuntimeError(f"a full page was asked for, {served} sessions came")
    return median(seconds)


def _backfill_summary(workdir: Path) -> dict[str, Any]:
    """From the backfill's log: its pages, windows, the concurrency it ended at, refusals."""
    found: dict[str, Any] = {}
    for line in (workdir / "backfill.log").read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = orjson.loads(line)
        if entry.get("event") == "backfill starting":
            found["windows"] = entry.get("windows")
        elif entry.get("event") == "backfill complete":
            for key in ("pages", "concurrency", "throttled"):
                found[key] = entry.get(key)
        elif entry.get("event") == "backfill concurrency lowered":
            found["lowered"] = found.get("lowered", 0) + 1
    return found


# -- 2. live latency ---------------------------------------------------------------------------


def bench_latency(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    runs = []
    for index in range(plan.runs):
        run = asyncio.run(_latency_once(ctx, index))
        say(
            f"  run {index + 1}/{plan.runs}: {run['arrived']}/{run['expected']} events, "
            f"p50 {_ms(run, 'p50')}, p99 {_ms(run, 'p99')}, max {_ms(run, 'max')}"
        )
        runs.append(run)
    summary: dict[str, Any] = {}
    for name in ("p50", "p99", "max"):
        value, bound = _median_flagged(runs, name)
        summary[f"{name}_ms"] = round(value, 1)
        if bound:
            summary[f"{name}_is_lower_bound"] = True
    summary["missing"] = sum(r["missing"] for r in runs)
    summary["expected"] = sum(r["expected"] for r in runs)
    summary["runs_with_stalled_ticks"] = sum(
        1 for r in runs if r["daemon"].get("ticks_without_pages")
    )
    summary["tick_seconds_p50"] = round(median([r["daemon"]["tick_seconds_p50"] for r in runs]), 3)
    per_session = median([r["upstream_records"]["per_session"] or 0.0 for r in runs])
    summary["records_read_per_session"] = round(per_session, 2)
    p99 = summary["p99_ms"]
    limit = plan.poll_interval * 1000 + LATENCY_SLACK_MS
    return {
        "parameters": {
            "runs": plan.runs,
            "sessions_per_second": plan.latency_rate,
            "session_seconds": [10, 20],
            "poll_interval_seconds": plan.poll_interval,
            "overlap_seconds": 300,
            "backlog_minutes": 6,
            "warmup_seconds": plan.latency_warmup,
            "window_seconds": plan.latency_window,
            "streams": f"completed every {plan.poll_interval:g} s; "
            + (
                f"started every {plan.latency_started:g} s"
                if plan.latency_started
                else "started off"
            )
            + "; counts off; reconcile every 5 min",
        },
        "runs": runs,
        "median": summary,
        "targets": [
            # A median can hide a run whose events never came: every one must arrive.
            target(
                "latency_p99",
                f"p99 ≤ {limit:,.0f} ms, every event arrives",
                p99,
                p99 <= limit and not summary.get("p99_is_lower_bound") and not summary["missing"],
            ),
            target(
                "records_per_session",
                f"upstream records read per session delivered ≤ {RECORDS_PER_SESSION}",
                round(per_session, 2),
                per_session <= RECORDS_PER_SESSION,
            ),
        ],
    }


def _median_flagged(runs: list[dict[str, Any]], name: str) -> tuple[float, bool]:
    """The median of the runs' figure; a lower bound if a run it is taken from was one."""
    ordered = sorted(runs, key=lambda r: r[f"{name}_ms"])
    middle = len(ordered) // 2
    used = ordered[middle : middle + 1] if len(ordered) % 2 else ordered[middle - 1 : middle + 1]
    value = statistics.fmean(r[f"{name}_ms"] for r in used)
    return value, any(r.get(f"{name}_is_lower_bound") for r in used)


def _ms(run: dict[str, Any], name: str) -> str:
    bound = ">= " if run.get(f"{name}_is_lower_bound") else ""
    return f"{bound}{run[f'{name}_ms']:,.0f} ms"


async def _latency_once(ctx: Context, index: int) -> dict[str, Any]:
    plan = ctx.plan
    workdir = ctx.dir(f"latency/run-{index}")
    say(f"latency run {index + 1}/{plan.runs}: {plan.latency_rate:g} sessions/s ending")
    # A running clock at real time (it starts at time.time()), sessions of 10-20 s, and six
    # minutes of backlog: the 5-minute overlap every scan re-reads is full from the start,
    # so the window measures the steady state rather than a warming-up daemon.
    emulator = Emulator(
        workdir,
        "--clock-speed", "1",
        "--traffic-rate", f"{plan.latency_rate * 60:g}",
        "--max-duration", "20",
        "--backlog-hours", "0.1",
        "--seed", str(100 + index),
    )  # fmt: skip
    daemon = None
    try:
        topics = Topics.unique("latency")
        await kafka_io.create_topics(ctx.bootstrap, [topics.completed])
        config = write_config(
            workdir / "poller.toml",
            emulator_url=emulator.url,
            bootstrap=ctx.bootstrap,
            topics=topics,
            state_path=workdir / "state.sqlite3",
            overrides={
                "completed": {"interval": f"{plan.poll_interval:g}s"},
                "started": {"interval": f"{plan.latency_started:g}s"}
                if plan.latency_started
                else {"enabled": False},
                "counts": {"enabled": False},
                "reconcile": {"interval": "5m"},
            },
        )
        arrivals = kafka_io.Arrivals()
        stop = asyncio.Event()
        consumer = asyncio.create_task(
            kafka_io.record_arrivals(ctx.bootstrap, topics.completed, arrivals, stop)
        )
        spawned = time.time()
        daemon = procs.spawn_poller(["run", "--config", str(config)], workdir / "poller.log")
        measure_from = spawned + plan.latency_warmup
        measure_until = measure_from + plan.latency_window
        await asyncio.sleep(measure_from - time.time())
        pids = {"daemon": daemon.pid, "emulator": emulator.pid, "broker": ctx.broker_pid}
        cpu_before = {name: cpu_of(pid) for name, pid in pids.items()}
        await asyncio.sleep(measure_until - time.time())
        cpu_after = {name: cpu_of(pid) for name, pid in pids.items()}
        # Sessions that ended inside the window arrive up to a few seconds later.
        await asyncio.sleep(plan.poll_interval + 5.0)
        offset = _clock_offset(emulator)
        observed_until = time.time()
        stop.set()
        await consumer
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon stopped early; see {workdir / 'poller.log'}")
        reads = _records_read(workdir / "poller.log", topics.completed)
        ended = emulator.admin(
            "GET", f"/admin/sessions?partnerId={procs.PARTNER_ID}&state=ended&records=false"
        )["sessions"]
    finally:
        if daemon is not None:
            await asyncio.to_thread(procs.stop_process, daemon)
        emulator.stop()
    # Emulator instants -> host clock (the emulator's clock started at time.time(); the
    # measured offset is normally a few milliseconds).
    in_window = {
        s["id"]: _epoch(s["endTime"]) - offset
        for s in ended
        if measure_from <= _epoch(s["endTime"]) - offset < measure_until
    }
    if not in_window:
        raise RuntimeError("no session ended inside the measured window")
    arrived_after: dict[int, float] = {}
    for arrived, value in arrivals.received:
        session_id = orjson.loads(value)["session"]["id"]
        if session_id in in_window and session_id not in arrived_after:
            arrived_after[session_id] = arrived - in_window[session_id]
    # A session whose event never came counts with the time it was waited for: a lower
    # bound, and the figures it lands on are marked as such.
    samples = sorted(
        (arrived_after.get(sid, observed_until - end), sid not in arrived_after)
        for sid, end in in_window.items()
    )
    ticks = _tick_log(workdir / "poller.log", measure_from, measure_until)
    result: dict[str, Any] = {
        "run": index,
        "expected": len(in_window),
        "arrived": len(arrived_after),
        "missing": len(in_window) - len(arrived_after),
    }
    for name, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0)):
        value, censored = commit_bench.percentile(samples, fraction)
        result[f"{name}_ms"] = round(value * 1000, 1)
        if censored:
            result[f"{name}_is_lower_bound"] = True
    result["min_ms"] = round(samples[0][0] * 1000, 1)
    result["upstream_records"] = reads
    result["clock_offset_ms"] = round(offset * 1000, 2)
    result["daemon"] = ticks
    result["cpu_seconds_in_window"] = {
        name: cpu_delta(cpu_before[name], cpu_after[name]) for name in cpu_before
    }
    return result


def _records_read(log_path: Path, completed_topic: str) -> dict[str, Any]:
    """From the running daemon's /metrics: upstream records read (all streams, and the
    completed stream's) per completed session delivered, over the whole run."""
    port = None
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = orjson.loads(line)
            if entry.get("event") == "glance-poller started":
                port = entry.get("metrics_port")
    if port is None:
        raise RuntimeError(f"no metrics port in {log_path}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    read: dict[str, float] = {}
    delivered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "glance_poller_upstream_records_read_total":
                stream = sample.labels["stream"]
                read[stream] = read.get(stream, 0.0) + sample.value
            elif (
                sample.name == "glance_poller_events_produced_total"
                and sample.labels.get("topic") == completed_topic
            ):
                delivered += sample.value
    total = sum(read.values())
    return {
        "records_read": read,
        "sessions_delivered": delivered,
        "per_session": round(total / delivered, 2) if delivered else None,
        "completed_per_session": round(read.get("completed", 0.0) / delivered, 2)
        if delivered
        else None,
    }


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _clock_offset(emulator: Emulator) -> float:
    """Emulator clock minus host clock, in seconds."""
    before = time.time()
    now = emulator.admin("GET", "/admin/clock")["now"]
    after = time.time()
    return _epoch(now) - (before + after) / 2


def _tick_log(path: Path, since: float, until: float) -> dict[str, Any]:
    """The daemon's completed-stream ticks inside the window: durations and pages."""
    seconds: list[float] = []
    pages: list[int] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = orjson.loads(line)
        if entry.get("event") != "tick" or entry.get("stream") != "completed":
            continue
        at = _epoch(entry["timestamp"])
        if since <= at < until:
            seconds.append(float(entry["seconds"]))
            pages.append(int(entry.get("pages", 0)))
    if not seconds:
        return {"ticks": 0, "tick_seconds_p50": 0.0, "tick_seconds_max": 0.0, "pages_p50": 0}
    return {
        "ticks": len(seconds),
        # Sessions end every second: a tick that fetched no page is a stalled scan.
        "ticks_without_pages": sum(1 for p in pages if p == 0),
        "tick_seconds_p50": round(median(seconds), 3),
        "tick_seconds_max": round(max(seconds), 3),
        "pages_p50": median([float(p) for p in pages]),
    }


# -- 3. memory ---------------------------------------------------------------------------------


def bench_memory(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    sizes = plan.memory_sizes
    workdir = ctx.dir("memory")
    clock = procs.frozen_clock()
    since, until = procs.backfill_range(clock)
    say(f"memory: emulator with {sizes[-1]:,} completed sessions")
    emulator = Emulator(workdir, "--clock-start", iso(clock), "--clock-speed", "0")
    runs: list[dict[str, Any]] = []
    try:
        first, _last = emulator.load_completed(sizes[-1], since, until)
        say(f"  emulator RSS {emulator.rss_kb() / MIB / 1024:.2f} GiB")
        for size in sizes:
            # Ids ascend with start times: the range up to the start of session first+size
            # holds about `size` sessions (the count on the topic is what is reported).
            end = until if size >= sizes[-1] else emulator.start_time_of(first + size)
            count = plan.memory_large_runs if size == sizes[-1] else plan.runs
            for index in range(count):
                say(f"  backfill of {size:,} sessions, run {index + 1}/{count}")
                result, _config = _backfill_once(
                    ctx, emulator, workdir / f"{size}-{index}", since, end
                )
                runs.append({"size": size, "run": index, **result})
                say(
                    f"  {result['events']:,} events in {result['seconds']:.1f} s, "
                    f"peak RSS {result['peak_rss_mib']:.1f} MiB"
                )
    finally:
        emulator.stop()
    peaks = [median([r["peak_rss_mib"] for r in runs if r["size"] == size]) for size in sizes]
    growth = (peaks[-1] - peaks[0]) / peaks[0]
    return {
        "parameters": {
            "sizes": list(sizes),
            "runs": {str(size): sum(1 for r in runs if r["size"] == size) for size in sizes},
            "measure": "ru_maxrss of the backfill process (os.wait4)",
        },
        "runs": runs,
        "median": {
            "peak_rss_mib": [round(p, 1) for p in peaks],
            "growth_percent": round(growth * 100, 1),
            "eps": [
                round(median([r["eps"] for r in runs if r["size"] == size]), 1) for size in sizes
            ],
        },
        "targets": [
            target(
                "memory_peak",
                f"peak RSS at {sizes[-1]:,} sessions ≤ {MEMORY_PEAK_MIB:g} MiB",
                round(peaks[-1], 1),
                peaks[-1] <= MEMORY_PEAK_MIB,
            ),
            target(
                "memory_growth",
                f"{sizes[-1]:,} within {MEMORY_GROWTH:.0%} of {sizes[0]:,}",
                round(growth * 100, 1),
                abs(growth) <= MEMORY_GROWTH,
            ),
        ],
    }


# -- 4. idle cost ------------------------------------------------------------------------------


def bench_idle(ctx: Context) -> dict[str, Any]:
    """Daemons with nothing to do. The runs are concurrent (each its own process, state and
    topics, one shared empty emulator): an idle daemon barely competes for the CPU, and its
    CPU time is its own whatever runs beside it."""
    plan = ctx.plan
    workdir = ctx.dir("idle")
    interval = f"{plan.idle_interval:g}s"
    say(f"idle: {plan.runs} daemon(s), polling every {interval}, for {plan.idle_window:g} s")
    emulator = Emulator(workdir, "--clock-speed", "1")
    daemons: list[subprocess.Popen[bytes]] = []
    runs: list[dict[str, Any]] = []
    try:
        for index in range(plan.runs):
            run_dir = workdir / f"run-{index}"
            config = write_config(
                run_dir / "poller.toml",
                emulator_url=emulator.url,
                bootstrap=ctx.bootstrap,
                topics=Topics.unique("idle"),
                state_path=run_dir / "state.sqlite3",
                overrides={"completed": {"interval": interval}, "started": {"interval": interval}},
            )
            daemons.append(
                procs.spawn_poller(["run", "--config", str(config)], run_dir / "poller.log")
            )
        time.sleep(plan.idle_warmup)
        before = [procs.cpu_seconds(d.pid) for d in daemons]
        started = time.monotonic()
        time.sleep(plan.idle_window)
        after = [procs.cpu_seconds(d.pid) for d in daemons]
        elapsed = time.monotonic() - started
        rss = [procs.proc_status_kb(d.pid, "VmRSS") / MIB for d in daemons]
        for index, daemon in enumerate(daemons):
            if daemon.poll() is not None:
                raise RuntimeError(f"idle daemon {index} stopped early; see {workdir}")
            used = after[index] - before[index]
            runs.append(
                {
                    "run": index,
                    "cpu_seconds": round(used, 3),
                    "seconds": round(elapsed, 2),
                    "cpu_seconds_per_minute": round(used / elapsed * 60, 4),
                    "percent_of_core": round(used / elapsed * 100, 3),
                    "rss_mib": round(rss[index], 1),
                }
            )
    finally:
        for daemon in daemons:
            procs.stop_process(daemon)
        emulator.stop()
    per_minute = median([r["cpu_seconds_per_minute"] for r in runs])
    percent = median([r["percent_of_core"] for r in runs])
    return {
        "parameters": {
            "runs": plan.runs,
            "concurrent": True,
            "completed_interval": interval,
            "started_interval": interval,
            "reconcile_interval": "5m (default)",
            "counts_interval": "5m (default)",
            "warmup_seconds": plan.idle_warmup,
            "window_seconds": plan.idle_window,
        },
        "runs": runs,
        "median": {
            "cpu_seconds_per_minute": round(per_minute, 4),
            "percent_of_core": round(percent, 3),
            "rss_mib": round(median([r["rss_mib"] for r in runs]), 1),
        },
        "targets": [
            target(
                "idle_cpu",
                f"< {IDLE_PERCENT:g} % of one core",
                round(percent, 3),
                percent < IDLE_PERCENT,
            )
        ],
    }


# -- 5. state commit cost ----------------------------------------------------------------------


def bench_commit(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    small, large = plan.commit_sizes
    workdir = ctx.dir("commit")
    runs = []
    for index in range(plan.runs):
        sizes = (small, large) if index % 2 == 0 else (large, small)
        run: dict[str, Any] = {"run": index}
        for held in sizes:
            timings = commit_bench.measure(workdir / f"{index}-{held}.sqlite3", held, plan.commits)
            run[str(held)] = commit_bench.summary_ms(timings)
        run["ratio"] = round(run[str(large)]["median_ms"] / run[str(small)]["median_ms"], 3)
        say(
            f"  commit run {index + 1}/{plan.runs}: {run[str(small)]['median_ms']:.2f} ms "
            f"with {small:,} ids, {run[str(large)]['median_ms']:.2f} ms with {large:,}"
        )
        runs.append(run)
    small_ms = median([r[str(small)]["median_ms"] for r in runs])
    large_ms = median([r[str(large)]["median_ms"] for r in runs])
    ratio = large_ms / small_ms
    return {
        "parameters": {
            "runs": plan.runs,
            "ids_held": [small, large],
            "commits_per_run": plan.commits,
            "page": f"{commit_bench.PAGE_IDS} new ids and a cursor",
            "filesystem_of": str(workdir),
        },
        "runs": runs,
        "median": {
            "median_ms_1k": round(small_ms, 3),
            "median_ms_200k": round(large_ms, 3),
            "p99_ms_1k": round(median([r[str(small)]["p99_ms"] for r in runs]), 3),
            "p99_ms_200k": round(median([r[str(large)]["p99_ms"] for r in runs]), 3),
            "ratio": round(ratio, 3),
        },
        "targets": [
            target(
                "commit_ratio",
                f"commit with {large:,} ids ≤ {COMMIT_RATIO:g}x with {small:,}",
                round(ratio, 3),
                ratio <= COMMIT_RATIO,
            )
        ],
    }


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "throughput": bench_throughput,
    "upstream": bench_upstream,
    "latency": bench_latency,
    "memory": bench_memory,
    "idle": bench_idle,
    "commit": bench_commit,
}


# -- the run -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    jar = next(iter(sorted((ROOT / "tools" / "kafka" / "jars").glob("kafka_2.13-*.jar"))), None)
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kb = int(meminfo.read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiokafka": metadata.version("aiokafka"),
        "kafka": jar.stem.split("-", 1)[1] if jar else None,
        "java": _java_version(),
        "git": _git(),
    }


def _java_version() -> str | None:
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (out.stderr or out.stdout).splitlines()
    return first[0] if first else None


def _git() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=30,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def source_digest() -> str:
    """A digest of the daemon's sources: a benchmark during which they change measured a mix."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "poller").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions",
        type=int,
        help="sessions the throughput backfill replays (default 200000; 20000 with --quick)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        help="runs per figure (default 3, throughput 5; 1 with --quick)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(BENCHMARKS),
        metavar="NAME[,NAME]",
        help=f"a subset of: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 20k sessions, 1 run, memory at 100k/200k, 20 s latency/idle windows",
    )
    parser.add_argument(
        "--latency-started",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run the started stream at this interval in the latency runs (default 0: off, "
        "so that only the completed stream polls)",
    )
    parser.add_argument(
        "--label",
        default="current",
        help="the results' label in results.json, e.g. before or after (default: current)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results.json",
        help="the results file, merged by label (default: bench/results.json)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=HERE / "README.md",
        help="the README whose results table is regenerated (default: bench/README.md)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (configs, logs, state files)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    # The daemon's own variables must not leak into the configs the benchmark loads.
    for name in [n for n in os.environ if n.startswith(("POLLER_", "GLANCE_", "KAFKA_"))]:
        del os.environ[name]
    started = time.monotonic()
    host = machine()  # before anything runs: the git commit is the one measured
    workdir = Path(tempfile.mkdtemp(prefix="glance-bench-"))
    selected = [name for name in ORDER if name in args.only]
    say(f"benchmarks {', '.join(selected)}; work folder {workdir}")
    broker = None
    results: dict[str, Any] = {}
    failed = False
    try:
        if any(name != "commit" for name in selected):
            say("starting a local Kafka broker")
            broker = LocalBroker()
            broker.start()
            say(f"broker at {broker.bootstrap}; warming it up")
            warm = load_config(
                write_config(
                    workdir / "warm.toml",
                    emulator_url="http://127.0.0.1:1",
                    bootstrap=broker.bootstrap,
                    topics=Topics.unique("warm"),
                    state_path=workdir / "warm.sqlite3",
                ),
                need_credentials=False,
            )
            asyncio.run(kafka_io.warm_up(warm.settings.kafka, Topics.unique("warm").completed))
        ctx = Context(plan, workdir, broker)
        for name in selected:
            say(f"== {name}")
            bench_started = time.monotonic()
            digest = source_digest()
            git = _git()
            try:
                result = RUNNERS[name](ctx)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                say(f"{name} failed: {exc}")
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
            result["wall_seconds"] = round(time.monotonic() - bench_started, 1)
            result["git"] = git
            result["sources"] = digest
            if source_digest() != digest:
                result["sources_changed_during_run"] = True
                say(f"WARNING: poller/ changed while {name} ran: its figures mix two versions")
            results[name] = result
            ctx.done[name] = result
            for item in result.get("targets", []):
                say(
                    f"   {item['target']}: {item['measured']} -> "
                    f"{'pass' if item['pass'] else 'FAIL'}"
                )
    except KeyboardInterrupt:
        failed = True
        say("interrupted")
    finally:
        if broker is not None:
            broker.cleanup()
        if args.keep or failed:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - started
    if results:
        entry = {
            "label": args.label,
            "mode": "quick" if args.quick else "full",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "wall_seconds": round(wall, 1),
            "machine": host,
            "benchmarks": results,
        }
        data = report.merge(args.output, args.label, entry)
        report.update_readme(args.readme, data)
        say(f"results in {args.output} (label {args.label!r}); table in {args.readme}")
    say(f"done in {wall / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
