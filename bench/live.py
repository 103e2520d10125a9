"""The benchmarks of a running daemon (`glance-poller run`) against the realistic emulator:
live freshness, late completions, many partners, and idle cost.

A consumer in the benchmark's process stamps every event with ``time.time()`` as it arrives; a
session's delay is that minus its ``endTime`` (the emulator's clock is the host's, started at
``time.time()``; the measured offset is subtracted and kept in ``results.json``). Every blocking
call is made in a thread, so that the consumer's stamps are not delayed by the benchmark itself.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import commit as commit_bench
from bench import kafka_io, procs
from bench.common import (
    MIB,
    REALISTIC,
    UPSTREAM_LATENCY,
    UPSTREAM_LATENCY_PER_RECORD,
    UPSTREAM_MAX_CONCURRENT,
    Context,
    Samples,
    by_label,
    cpu_delta,
    cpu_of,
    median,
    metrics_port,
    scrape,
    target,
    total,
)
from bench.procs import Emulator, Topics, iso, say, write_config
from poller.glance.client import SERVICE_PATH
from poller.service import TICK_MARK
from poller.settings import StartedStreamSettings

POLL_INTERVAL = 5.0  # the completed stream's interval in the live runs (seconds)
LATENCY_SLACK_MS = 250.0  # p99 <= interval + page latency + this
POLL_WINDOW = timedelta(minutes=1)  # the bare client's window: an idle scan's is a tick or so
RECORDS_PER_SESSION = 1.5  # upstream records read per session delivered
LATE_INTERVALS = 2.0  # late completions: p99 <= this many reconcile intervals
LATE_DURATIONS = (600, 6 * 3600)  # late sessions last 10 min to 6 h (log-uniform)
MANY_PEAK_MIB = 250.0
MANY_IDLE_PERCENT = 5.0
IDLE_PERCENT = 1.0
MANY_FIRST_PARTNER = 20_001
# How long past its warm-up a live run waits for the daemon to deliver the backlog.
CATCH_UP_LIMIT = 150.0
# An emulator busier than this share of one core is taken as not keeping up.
EMULATOR_SATURATED = 0.85
COMPLETED_OP = "PartnerCompletedSessions"
LIVE_SERVICE = {
    "latency": UPSTREAM_LATENCY,
    "latency_per_record": UPSTREAM_LATENCY_PER_RECORD,
    "max_concurrent": UPSTREAM_MAX_CONCURRENT,
}


# -- shared ------------------------------------------------------------------------------------


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _admin(emulator: Emulator, method: str, path: str, body: Any = None) -> Any:
    return await asyncio.to_thread(emulator.admin, method, path, body)


async def _clock_offset(emulator: Emulator) -> float:
    """Emulator clock minus host clock, in seconds."""
    before = time.time()
    now = (await _admin(emulator, "GET", "/admin/clock"))["now"]
    after = time.time()
    return _epoch(now) - (before + after) / 2


def _delays(
    ends: dict[int, float], arrivals: kafka_io.Arrivals, observed_until: float
) -> dict[str, Any]:
    """p50/p99/max of end -> arrival over the sessions of ``ends`` (id -> end, host clock). A
    session whose event never came counts with the time it was waited for: a lower bound, and
    the figures it lands on are marked as such."""
    arrived_after: dict[int, float] = {}
    for arrived, event in arrivals.received:
        session_id = orjson.loads(event)["session"]["id"]
        if session_id in ends and session_id not in arrived_after:
            arrived_after[session_id] = arrived - ends[session_id]
    samples = sorted(
        (arrived_after.get(sid, observed_until - end), sid not in arrived_after)
        for sid, end in ends.items()
    )
    result: dict[str, Any] = {
        "expected": len(ends),
        "arrived": len(arrived_after),
        "missing": len(ends) - len(arrived_after),
    }
    if not samples:
        return result
    for name, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0)):
        value, censored = commit_bench.percentile(samples, fraction)
        result[f"{name}_ms"] = round(value * 1000, 1)
        if censored:
            result[f"{name}_is_lower_bound"] = True
    result["min_ms"] = round(samples[0][0] * 1000, 1)
    if result["missing"]:
        result["missing_ids"] = sorted(set(ends) - set(arrived_after))[:20]
    return result


def _median_flagged(runs: list[dict[str, Any]], name: str) -> tuple[float, bool]:
    """The median of the runs' figure; a lower bound if a run it is taken from was one."""
    ordered = sorted(runs, key=lambda r: r[f"{name}_ms"])
    middle = len(ordered) // 2
    used = ordered[middle : middle + 1] if len(ordered) % 2 else ordered[middle - 1 : middle + 1]
    value = statistics.fmean(r[f"{name}_ms"] for r in used)
    return value, any(r.get(f"{name}_is_lower_bound") for r in used)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in ("p50", "p99", "max"):
        value, bound = _median_flagged(runs, name)
        summary[f"{name}_ms"] = round(value, 1)
        if bound:
            summary[f"{name}_is_lower_bound"] = True
    summary["missing"] = sum(r["missing"] for r in runs)
    summary["expected"] = sum(r["expected"] for r in runs)
    return summary


def _ms(run: dict[str, Any], name: str) -> str:
    if f"{name}_ms" not in run:
        return "-"
    bound = ">= " if run.get(f"{name}_is_lower_bound") else ""
    return f"{bound}{run[f'{name}_ms']:,.0f} ms"


def _live_config(
    workdir: Path,
    emulator: Emulator,
    ctx: Context,
    topics: Topics,
    partners: list[int],
    *,
    started: float,
    reconcile: str = "5m",
    counts: bool = False,
    jitter: float = 0.0,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    overrides: dict[str, dict[str, Any]] = {
        "completed": {"interval": f"{POLL_INTERVAL:g}s"},
        "started": {"interval": f"{started:g}s"} if started else {"enabled": False},
        "counts": {} if counts else {"enabled": False},
        "reconcile": {"interval": reconcile},
        "service": {"start_jitter": f"{jitter:g}s"},
    }
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return write_config(
        workdir / "poller.toml",
        emulator_url=emulator.url,
        bootstrap=ctx.bootstrap,
        topics=topics,
        state_path=workdir / "state.sqlite3",
        overrides=overrides,
        partners=partners,
    )


def _window_metrics(before: Samples, after: Samples, topic: str) -> dict[str, Any]:
    """What the daemon's own counters say about the measured window: the mean latency of its
    completed-listing calls (the page latency of the target), its calls, and the upstream
    records it read per completed session it delivered."""

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    seconds = delta("glance_poller_upstream_request_seconds_sum", operation=COMPLETED_OP)
    calls = delta("glance_poller_upstream_request_seconds_count", operation=COMPLETED_OP)
    read_after = by_label(after, "glance_poller_upstream_records_read_total", "stream")
    read_before = by_label(before, "glance_poller_upstream_records_read_total", "stream")
    read = {k: v - read_before.get(k, 0.0) for k, v in read_after.items()}
    delivered = delta("glance_poller_events_produced_total", topic=topic)
    ops_after = by_label(after, "glance_poller_upstream_requests_total", "operation")
    ops_before = by_label(before, "glance_poller_upstream_requests_total", "operation")
    return {
        "page_latency_ms": round(seconds / calls * 1000, 1) if calls else None,
        "completed_calls": int(calls),
        "calls_by_operation": {k: int(v - ops_before.get(k, 0.0)) for k, v in ops_after.items()},
        "records_read": {k: int(v) for k, v in read.items()},
        "sessions_delivered": int(delivered),
        "records_read_per_session": round(sum(read.values()) / delivered, 3) if delivered else None,
    }


def _whole_run_reads(samples: Samples, topic: str) -> dict[str, Any]:
    read = by_label(samples, "glance_poller_upstream_records_read_total", "stream")
    delivered = total(samples, "glance_poller_events_produced_total", topic=topic)
    return {
        "records_read": {k: int(v) for k, v in read.items()},
        "sessions_delivered": int(delivered),
        "per_session": round(sum(read.values()) / delivered, 3) if delivered else None,
    }


def _tick_log(path: Path, since: float, until: float) -> dict[str, Any]:
    """The daemon's completed-stream ticks inside the window: durations and pages."""
    seconds: list[float] = []
    pages: list[int] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{") or '"tick"' not in line:
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
        "ticks_without_pages": sum(1 for p in pages if p == 0),
        "tick_seconds_p50": round(median(seconds), 3),
        "tick_seconds_max": round(max(seconds), 3),
        "pages_p50": median([float(p) for p in pages]),
    }


def _ended_in(
    sessions: list[dict[str, Any]], offset: float, since: float, until: float
) -> dict[int, float]:
    """Ids of the sessions that ended in [since, until) (host clock) -> their end."""
    ends = {}
    for session in sessions:
        end = _epoch(session["endTime"]) - offset
        if since <= end < until:
            ends[session["id"]] = end
    return ends


async def _live_run(
    ctx: Context,
    workdir: Path,
    emulator_args: list[str],
    partners: list[int],
    *,
    warmup: float,
    window: float,
    jitter: float = 0.0,
    started: float = 0.0,
) -> dict[str, Any]:
    """One daemon serving ``partners`` against an emulator with live traffic for each: the
    delay of every session that ends in the window, the daemon's figures over the window."""
    emulator = Emulator(workdir, *emulator_args, partners=partners)
    daemon = None
    try:
        topics = Topics.unique("live")
        await kafka_io.create_topics(ctx.bootstrap, [topics.completed])
        config = _live_config(
            workdir, emulator, ctx, topics, partners, started=started, jitter=jitter
        )
        arrivals = kafka_io.Arrivals()
        stop = asyncio.Event()
        consumer = asyncio.create_task(
            kafka_io.record_arrivals(ctx.bootstrap, topics.completed, arrivals, stop)
        )
        spawned = time.time()
        log_path = workdir / "poller.log"
        daemon = procs.spawn_poller(["run", "--config", str(config)], log_path)
        port = await asyncio.to_thread(metrics_port, log_path)
        # The steady state, not the catch-up: the window starts after the warm-up and once
        # the backlog (the sessions ended by the start) has arrived, or at most after
        # CATCH_UP_LIMIT more seconds (then results.json says it had not caught up).
        backlog = await _ended_count(emulator)
        caught_up = await _caught_up(arrivals, backlog, spawned + warmup + CATCH_UP_LIMIT)
        measure_from = max(spawned + warmup, time.time() + (5.0 if caught_up else 0.0))
        measure_until = measure_from + window
        await asyncio.sleep(measure_from - time.time())
        pids = {"daemon": daemon.pid, "emulator": emulator.pid, "broker": ctx.broker_pid}
        cpu_before = {name: cpu_of(pid) for name, pid in pids.items()}
        metrics_before = await asyncio.to_thread(scrape, port)
        stats_before = await _admin(emulator, "GET", "/admin/stats")
        await asyncio.sleep(measure_until - time.time())
        cpu_after = {name: cpu_of(pid) for name, pid in pids.items()}
        metrics_after = await asyncio.to_thread(scrape, port)
        stats_after = await _admin(emulator, "GET", "/admin/stats")
        # Sessions that ended inside the window arrive up to an interval and a few pages later.
        await asyncio.sleep(POLL_INTERVAL + 10.0)
        offset = await _clock_offset(emulator)
        observed_until = time.time()
        stop.set()
        await consumer
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon stopped early; see {log_path}")
        metrics_end = await asyncio.to_thread(scrape, port)
        peak_kb = procs.proc_status_kb(daemon.pid, "VmHWM")
        rss_kb = procs.proc_status_kb(daemon.pid, "VmRSS")
        ended = (await _admin(emulator, "GET", "/admin/sessions?state=ended&records=false"))[
            "sessions"
        ]
    finally:
        if daemon is not None:
            await asyncio.to_thread(procs.stop_process, daemon)
        emulator.stop()
    ends = _ended_in(ended, offset, measure_from, measure_until)
    if not ends:
        raise RuntimeError("no session ended inside the measured window")
    result = _delays(ends, arrivals, observed_until)
    seconds = measure_until - measure_from
    cpu = {name: cpu_delta(cpu_before[name], cpu_after[name]) for name in cpu_before}
    emulator_busy = (cpu["emulator"] or 0.0) / seconds
    calls = _partner_calls(stats_before, stats_after, partners, seconds)
    result |= {
        "partners": len(partners),
        "backlog_sessions": backlog,
        "caught_up_with_backlog": caught_up,
        "window_started_after_seconds": round(measure_from - spawned, 1),
        "sessions_ended_per_second": round(len(ends) / seconds, 1),
        "window": _window_metrics(metrics_before, metrics_after, topics.completed),
        "whole_run": _whole_run_reads(metrics_end, topics.completed),
        "upstream_calls_per_minute_per_partner": calls,
        "clock_offset_ms": round(offset * 1000, 2),
        "daemon": _tick_log(log_path, measure_from, measure_until),
        "cpu_seconds_in_window": cpu,
        "percent_of_core_in_window": {
            name: round(value / seconds * 100, 1) for name, value in cpu.items() if value
        },
        "emulator_saturated": emulator_busy >= EMULATOR_SATURATED,
        "daemon_peak_rss_mib": round(peak_kb / MIB, 1),
        "daemon_rss_mib": round(rss_kb / MIB, 1),
    }
    return result


async def _ended_count(emulator: Emulator) -> int:
    found = await _admin(emulator, "GET", "/admin/sessions?state=ended&records=false")
    return len(found["sessions"])


async def _caught_up(arrivals: kafka_io.Arrivals, backlog: int, deadline: float) -> bool:
    """Whether the consumer has received ``backlog`` events before ``deadline``."""
    while len(arrivals.received) < backlog:
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


def _partner_calls(
    before: dict[str, Any], after: dict[str, Any], partners: list[int], seconds: float
) -> dict[str, float]:
    """Upstream calls per minute per partner (the emulator's count, refusals included):
    median, min and max over the partners."""
    rates = []
    for partner_id in partners:
        was = before.get("partners", {}).get(str(partner_id), {}).get("calls", 0)
        now = after.get("partners", {}).get(str(partner_id), {}).get("calls", 0)
        rates.append((now - was) / seconds * 60)
    return {
        "median": round(median(rates), 2),
        "min": round(min(rates), 2),
        "max": round(max(rates), 2),
    }


def _freshness_target(
    name: str, p99: float, page_ms: float | None, summary: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    limit = POLL_INTERVAL * 1000 + (page_ms or 0.0) + LATENCY_SLACK_MS
    verdict = target(
        name,
        f"p99 ≤ interval {POLL_INTERVAL * 1000:,.0f} + page latency {page_ms or 0:,.0f} + "
        f"{LATENCY_SLACK_MS:g} = {limit:,.0f} ms, every event arrives",
        p99,
        p99 <= limit and not summary.get("p99_is_lower_bound") and not summary["missing"],
    )
    return verdict, limit


# -- live freshness ----------------------------------------------------------------------------


def bench_latency(ctx: Context) -> dict[str, Any]:
    """One partner, 50 sessions ending a second, the realistic service, the completed stream
    every 5 s: the delay from each session's end to its event, and the upstream records read
    per session delivered."""
    plan = ctx.plan
    runs = []
    for index in range(plan.runs):
        say(f"latency run {index + 1}/{plan.runs}: {plan.latency_rate:g} sessions/s ending")
        # Sessions of 10-20 s, and six minutes of backlog, so that the 5-minute overlap is
        # full from the start (the steady state, not a warming-up daemon).
        emulator_args = [
            "--clock-speed", "1",
            "--traffic-rate", f"{plan.latency_rate * 60:g}",
            "--max-duration", "20",
            "--backlog-hours", "0.1",
            "--seed", str(100 + index),
            *REALISTIC,
        ]  # fmt: skip
        run = asyncio.run(
            _live_run(
                ctx,
                ctx.dir(f"latency/run-{index}"),
                emulator_args,
                [procs.PARTNER_ID],
                warmup=plan.latency_warmup,
                window=plan.latency_window,
                started=plan.latency_started,
            )
        )
        run["run"] = index
        window = run["window"]
        say(
            f"  run {index + 1}/{plan.runs}: {run['arrived']}/{run['expected']} events, "
            f"p50 {_ms(run, 'p50')}, p99 {_ms(run, 'p99')}, max {_ms(run, 'max')}; "
            f"page {window['page_latency_ms']} ms; "
            f"{window['records_read_per_session']} records read per session"
        )
        runs.append(run)
    summary = _summary(runs)
    summary["runs_with_stalled_ticks"] = sum(
        1 for r in runs if r["daemon"].get("ticks_without_pages")
    )
    summary["tick_seconds_p50"] = round(median([r["daemon"]["tick_seconds_p50"] for r in runs]), 3)
    pages = [r["window"]["page_latency_ms"] for r in runs if r["window"]["page_latency_ms"]]
    page_ms = median(pages) if pages else None
    summary["page_latency_ms"] = round(page_ms, 1) if page_ms else None
    per_session = median([r["window"]["records_read_per_session"] or math.inf for r in runs])
    summary["records_read_per_session"] = round(per_session, 2)
    summary["records_read_per_session_whole_run"] = round(
        median([r["whole_run"]["per_session"] or math.inf for r in runs]), 2
    )
    summary["calls_per_minute"] = median(
        [r["upstream_calls_per_minute_per_partner"]["median"] for r in runs]
    )
    freshness, limit = _freshness_target("latency_p99", summary["p99_ms"], page_ms, summary)
    summary["p99_limit_ms"] = round(limit, 1)
    return {
        "parameters": {
            "runs": plan.runs,
            "sessions_per_second": plan.latency_rate,
            "session_seconds": [10, 20],
            "poll_interval_seconds": POLL_INTERVAL,
            "service": LIVE_SERVICE,
            "overlap_seconds": 300,
            "backlog_minutes": 6,
            "warmup_seconds": plan.latency_warmup,
            "window_seconds": plan.latency_window,
            "streams": f"completed every {POLL_INTERVAL:g} s; "
            + (
                f"started every {plan.latency_started:g} s"
                if plan.latency_started
                else "started off"
            )
            + "; counts off; reconcile every 5 min",
            "page_latency": "the mean of the daemon's PartnerCompletedSessions calls in the "
            "window (its /metrics: upstream_request_seconds sum / count)",
            "records_read_per_session": "in the window, from the daemon's /metrics: "
            "upstream_records_read_total (every stream) / events_produced_total (completed)",
        },
        "runs": runs,
        "median": summary,
        "targets": [
            # A median can hide a run whose events never came: every one must arrive.
            freshness,
            target(
                "records_per_session",
                f"upstream records read per session delivered ≤ {RECORDS_PER_SESSION}",
                round(per_session, 2),
                per_session <= RECORDS_PER_SESSION,
            ),
        ],
    }


# -- late completions --------------------------------------------------------------------------


def bench_late(ctx: Context) -> dict[str, Any]:
    """Sessions lasting 10 min to 6 h, backdated so that they end during a few minutes of the
    run; the reconcile sweep every 30 s instead of 5 min (the target scales with it)."""
    plan = ctx.plan
    say(
        f"late: {plan.late_rate:g} sessions/s lasting {LATE_DURATIONS[0] // 60} min to "
        f"{LATE_DURATIONS[1] // 3600} h end over {plan.late_window:g} s; reconcile every "
        f"{plan.late_reconcile:g} s"
    )
    result = asyncio.run(_late_run(ctx, ctx.dir("late")))
    daemons = result["daemons"]
    sweep = daemons["sweep"]
    limit = LATE_INTERVALS * plan.late_reconcile * 1000
    for name, run in daemons.items():
        say(
            f"  {name}: {run['arrived']}/{run['expected']} late sessions, "
            f"p50 {_ms(run, 'p50')}, p99 {_ms(run, 'p99')}, max {_ms(run, 'max')}"
        )
    summary = {
        f"{name}_{key}": run[key]
        for name, run in daemons.items()
        for key in ("p50_ms", "p99_ms", "max_ms", "missing", "expected")
        if key in run
    } | {
        f"{name}_{key}": True
        for name, run in daemons.items()
        for key in ("p99_is_lower_bound",)
        if run.get(key)
    }
    summary["reconcile_seconds"] = plan.late_reconcile
    summary["p99_limit_ms"] = limit
    p99 = sweep.get("p99_ms", math.inf)
    return {
        "parameters": {
            "late_sessions_per_second": plan.late_rate,
            "durations_seconds": list(LATE_DURATIONS),
            "durations": "log-uniform",
            "window_seconds": plan.late_window,
            "reconcile_interval_seconds": plan.late_reconcile,
            "background_traffic": "1 session/s per partner, 10-20 s long",
            "service": LIVE_SERVICE,
            "daemons": {
                "sweep": "started stream off: only the reconcile sweep can find them",
                "started": f"started stream every {POLL_INTERVAL:g} s (each session seen open "
                "is fetched when it leaves the open listing)",
            },
            "completed_interval_seconds": POLL_INTERVAL,
            "start_lookback": "7h (the feed begins before the oldest late session's start)",
        },
        "runs": [result],
        "median": summary,
        "targets": [
            target(
                "late_p99",
                f"p99 ≤ {LATE_INTERVALS:g} reconcile intervals = {limit / 1000:g} s, "
                "every event arrives (the sweep alone)",
                p99,
                p99 <= limit and not sweep.get("p99_is_lower_bound") and not sweep["missing"],
            )
        ],
    }


def _late_sessions(
    rng: random.Random, count: int, since: float, until: float
) -> list[dict[str, Any]]:
    """``count`` sessions ending evenly in [since, until), lasting 10 min to 6 h (log-uniform),
    in start order (so that ids ascend with starts, as upstream gives them)."""
    low, high = (math.log(d) for d in LATE_DURATIONS)
    spans: list[tuple[int, int]] = []
    for index in range(count):
        end = math.floor(since + (index + rng.random()) * (until - since) / count)
        spans.append((end - int(math.exp(rng.uniform(low, high))), end))
    spans.sort()
    return [
        {
            "startTime": iso(datetime.fromtimestamp(start, UTC)),
            "endTime": iso(datetime.fromtimestamp(end, UTC)),
            "status": rng.choice(("C", "C", "C", "X")),
        }
        for start, end in spans
    ]


async def _late_run(ctx: Context, workdir: Path) -> dict[str, Any]:
    plan = ctx.plan
    variants = {"sweep": (procs.PARTNER_ID, 0.0), "started": (procs.PARTNER_ID + 1, POLL_INTERVAL)}
    partners = [partner for partner, _started in variants.values()]
    emulator = Emulator(
        workdir,
        "--clock-speed", "1",
        "--traffic-rate", "60",
        "--max-duration", "20",
        "--seed", "7",
        *REALISTIC,
        partners=partners,
    )  # fmt: skip
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        warmup = 20.0
        since = time.time() + warmup + 5.0
        until = since + plan.late_window
        count = round(plan.late_rate * plan.late_window)
        late_ids: dict[str, dict[int, float]] = {}
        rng = random.Random(16)
        for name, (partner, _started) in variants.items():
            batch = _late_sessions(rng, count, since, until)
            ids = (
                await _admin(
                    emulator, "POST", "/admin/sessions", {"partnerId": partner, "sessions": batch}
                )
            )["ids"]
            late_ids[name] = {sid: _epoch(s["endTime"]) for sid, s in zip(ids, batch, strict=True)}
        offset = await _clock_offset(emulator)
        topics: dict[str, Topics] = {}
        arrivals: dict[str, kafka_io.Arrivals] = {}
        stop = asyncio.Event()
        consumers = []
        for name, (partner, started) in variants.items():
            topics[name] = Topics.unique(f"late-{name}")
            await kafka_io.create_topics(ctx.bootstrap, [topics[name].completed])
            run_dir = workdir / name
            run_dir.mkdir(parents=True, exist_ok=True)
            config = _live_config(
                run_dir,
                emulator,
                ctx,
                topics[name],
                [partner],
                started=started,
                reconcile=f"{plan.late_reconcile:g}s",
                extra={"completed": {"start_lookback": "7h"}},
            )
            arrivals[name] = kafka_io.Arrivals()
            consumers.append(
                asyncio.create_task(
                    kafka_io.record_arrivals(
                        ctx.bootstrap, topics[name].completed, arrivals[name], stop
                    )
                )
            )
            daemons[name] = procs.spawn_poller(
                ["run", "--config", str(config)], run_dir / "poller.log"
            )
        # Late sessions ending in the window arrive within two sweeps, and some margin.
        await asyncio.sleep(until - time.time() + LATE_INTERVALS * plan.late_reconcile + 15.0)
        observed_until = time.time()
        stop.set()
        await asyncio.gather(*consumers)
        for name, daemon in daemons.items():
            if daemon.poll() is not None:
                raise RuntimeError(f"the {name} daemon stopped early; see {workdir / name}")
        stats = await _admin(emulator, "GET", "/admin/stats")
    finally:
        for daemon in daemons.values():
            await asyncio.to_thread(procs.stop_process, daemon)
        emulator.stop()
    results: dict[str, Any] = {}
    for name in variants:
        ends = {sid: end - offset for sid, end in late_ids[name].items()}
        results[name] = _delays(ends, arrivals[name], observed_until) | {
            "sweeps": _sweep_log(workdir / name / "poller.log")
        }
    return {"daemons": results, "clock_offset_ms": round(offset * 1000, 2), "upstream": stats}


def _sweep_log(path: Path) -> dict[str, Any]:
    """The reconcile sweeps: how many, how long, late completions found."""
    seconds: list[float] = []
    found = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{") or '"reconcile"' not in line:
            continue
        entry = orjson.loads(line)
        if entry.get("event") == "tick" and entry.get("stream") == "reconcile":
            seconds.append(float(entry["seconds"]))
            found += int(entry.get("late_completions", 0))
    return {
        "sweeps": len(seconds),
        "seconds_p50": round(median(seconds), 3) if seconds else None,
        "seconds_max": round(max(seconds), 3) if seconds else None,
        "late_completions": found,
    }


# -- many partners -----------------------------------------------------------------------------


def bench_many(ctx: Context) -> dict[str, Any]:
    """N partners (300) in one daemon, each with its own key and traffic (one session ending a
    second), the realistic service: freshness and peak RSS under traffic, then CPU at idle
    (a fresh daemon, the same partners, no traffic)."""
    plan = ctx.plan
    count = plan.many_partners
    partners = list(range(MANY_FIRST_PARTNER, MANY_FIRST_PARTNER + count))
    workdir = ctx.dir("many")
    say(f"many: {count} partners, each one session ending a second, in one daemon")
    emulator_args = [
        "--clock-speed", "1",
        "--traffic-rate", "60",
        "--max-duration", "20",
        "--backlog-hours", "0.1",
        "--seed", "300",
        *REALISTIC,
    ]  # fmt: skip
    run = asyncio.run(
        _live_run(
            ctx,
            workdir / "traffic",
            emulator_args,
            partners,
            warmup=plan.many_warmup,
            window=plan.many_window,
            # Each partner's first ticks spread over one interval, as deployed.
            jitter=POLL_INTERVAL,
        )
    )
    window = run["window"]
    busy = run["percent_of_core_in_window"]
    say(
        f"  {run['arrived']}/{run['expected']} events ({run['sessions_ended_per_second']:g} "
        f"ended/s), p50 {_ms(run, 'p50')}, p99 {_ms(run, 'p99')}, max {_ms(run, 'max')}; "
        f"page {window['page_latency_ms']} ms; peak RSS {run['daemon_peak_rss_mib']} MiB "
        f"(at the end {run['daemon_rss_mib']} MiB); CPU % of a core: {busy}; window from "
        f"{run['window_started_after_seconds']:g} s, backlog of {run['backlog_sessions']:,} "
        + ("delivered" if run["caught_up_with_backlog"] else "NOT delivered by then")
    )
    if run["emulator_saturated"]:
        say(
            f"  WARNING: the emulator used {busy.get('emulator')} % of a core: it may not keep "
            f"up with {count} partners (see results.json)"
        )
    say(f"  idle: {count} partners, no traffic, for {plan.idle_window:g} s")
    idle = _idle_daemons(ctx, workdir / "idle", [partners], jitter=POLL_INTERVAL, floor=True)[0]
    bare = idle["bare_client"]
    say(
        f"  idle: {idle['percent_of_core']:.2f} % of a core, "
        f"{idle['calls_per_minute_per_partner']['median']:g} calls/min/partner; a bare "
        f"aiohttp client making the same calls: {bare['percent_of_core']:.2f} % of a core"
    )
    summary = _summary([run])
    page_ms = window["page_latency_ms"]
    freshness, limit = _freshness_target("many_p99", summary["p99_ms"], page_ms, summary)
    summary |= {
        "partners": count,
        "page_latency_ms": page_ms,
        "p99_limit_ms": round(limit, 1),
        "sessions_ended_per_second": run["sessions_ended_per_second"],
        "peak_rss_mib": run["daemon_peak_rss_mib"],
        "rss_at_end_mib": run["daemon_rss_mib"],
        "caught_up_with_backlog": run["caught_up_with_backlog"],
        "window_started_after_seconds": run["window_started_after_seconds"],
        "idle_percent_of_core": idle["percent_of_core"],
        "idle_rss_mib": idle["rss_mib"],
        "idle_calls_per_minute_per_partner": idle["calls_per_minute_per_partner"]["median"],
        "idle_bare_client_percent_of_core": bare["percent_of_core"],
        "emulator_percent_of_core": busy.get("emulator"),
        "daemon_percent_of_core": busy.get("daemon"),
        "emulator_saturated": run["emulator_saturated"],
    }
    return {
        "parameters": {
            "partners": count,
            "sessions_per_second_per_partner": 1,
            "session_seconds": [10, 20],
            "service": LIVE_SERVICE,
            "poll_interval_seconds": POLL_INTERVAL,
            "start_jitter_seconds": POLL_INTERVAL,
            "streams": f"completed every {POLL_INTERVAL:g} s; started off; counts off; "
            "reconcile every 5 min (idle: completed every 5 s, started every 30 s, counts and "
            "reconcile every 5 min: the defaults but the fast scan)",
            "warmup_seconds": plan.many_warmup,
            "window_seconds": plan.many_window,
            "idle_window_seconds": plan.idle_window,
            "peak_rss": "VmHWM of the daemon at the end of the traffic run",
            "idle_bare_client": "the floor under the idle figure: after the idle daemon, a "
            "bare aiohttp client in the benchmark process makes the same calls (the rates "
            "the daemon was measured making, on the same quarter-second marks, each partner's key "
            "and request body) and parses each answer, for the same window; its thread's CPU "
            "time",
        },
        "runs": [run, {"idle": idle}],
        "median": summary,
        "targets": [
            freshness,
            target(
                "many_peak_rss",
                f"peak RSS with {count} partners ≤ {MANY_PEAK_MIB:g} MiB",
                run["daemon_peak_rss_mib"],
                run["daemon_peak_rss_mib"] <= MANY_PEAK_MIB,
            ),
            target(
                "many_idle_cpu",
                f"CPU at idle with {count} partners < {MANY_IDLE_PERCENT:g} % of one core",
                idle["percent_of_core"],
                idle["percent_of_core"] < MANY_IDLE_PERCENT,
            ),
        ],
    }


# -- idle cost ---------------------------------------------------------------------------------


# The started stream's default interval: idle daemons run it as deployed (the fast scan's 5 s
# is the freshness the live runs measure; the started stream's is not).
STARTED_DEFAULT_SECONDS = StartedStreamSettings().interval


def _idle_daemons(
    ctx: Context,
    workdir: Path,
    groups: list[list[int]],
    *,
    jitter: float = 0.0,
    floor: bool = False,
) -> list[dict[str, Any]]:
    """One daemon per group of partners, all at once, against one emulator without sessions
    (the realistic service): the completed stream every 5 s, started, counts and reconcile at
    their defaults (30 s, 5 min, 5 min). CPU time (utime + stime) over the window after a
    warm-up, and the emulator's count of each partner's calls. With ``floor`` (one group),
    the daemons stopped, a bare client then makes the same calls (``_bare_client``)."""
    plan = ctx.plan
    interval = f"{plan.idle_interval:g}s"
    every = [partner for group in groups for partner in group]
    emulator = Emulator(workdir, "--clock-speed", "1", *REALISTIC, partners=every)
    daemons: list[subprocess.Popen[bytes]] = []
    runs: list[dict[str, Any]] = []
    try:
        for index, group in enumerate(groups):
            run_dir = workdir / f"run-{index}"
            run_dir.mkdir(parents=True, exist_ok=True)
            config = _live_config(
                run_dir,
                emulator,
                ctx,
                Topics.unique("idle"),
                group,
                started=STARTED_DEFAULT_SECONDS,
                counts=True,
                jitter=jitter,
                extra={"completed": {"interval": interval}, "reconcile": {"interval": "5m"}},
            )
            daemons.append(
                procs.spawn_poller(["run", "--config", str(config)], run_dir / "poller.log")
            )
        time.sleep(plan.idle_warmup + jitter)
        before = [procs.cpu_seconds(d.pid) for d in daemons]
        stats_before = emulator.admin("GET", "/admin/stats")
        started = time.monotonic()
        time.sleep(plan.idle_window)
        after = [procs.cpu_seconds(d.pid) for d in daemons]
        stats_after = emulator.admin("GET", "/admin/stats")
        elapsed = time.monotonic() - started
        rss = [procs.proc_status_kb(d.pid, "VmRSS") / MIB for d in daemons]
        for index, daemon in enumerate(daemons):
            if daemon.poll() is not None:
                raise RuntimeError(f"idle daemon {index} stopped early; see {workdir}")
            used = after[index] - before[index]
            runs.append(
                {
                    "run": index,
                    "partners": len(groups[index]),
                    "cpu_seconds": round(used, 3),
                    "seconds": round(elapsed, 2),
                    "cpu_seconds_per_minute": round(used / elapsed * 60, 4),
                    "percent_of_core": round(used / elapsed * 100, 3),
                    "rss_mib": round(rss[index], 1),
                    "calls_per_minute_per_partner": _partner_calls(
                        stats_before, stats_after, groups[index], elapsed
                    ),
                }
            )
        for daemon in daemons:
            procs.stop_process(daemon)
        if floor:
            rates = {
                operation: (counted.get("total", 0)
                            - stats_before["calls"].get(operation, {}).get("total", 0))
                / elapsed * 60 / len(every)
                for operation, counted in stats_after["calls"].items()
            }  # fmt: skip
            runs[0]["bare_client"] = asyncio.run(
                _bare_client(emulator.url, every, rates, plan.idle_warmup, plan.idle_window)
            )
    finally:
        for daemon in daemons:
            procs.stop_process(daemon)
        emulator.stop()
    return runs


async def _bare_client(
    url: str, partners: list[int], rates: dict[str, float], warmup: float, seconds: float
) -> dict[str, Any]:
    """The floor under the idle daemon's CPU: a bare aiohttp client making its calls (each
    partner, each operation at the rate the daemon was measured making it, spread over the
    interval on the daemon's quarter-second marks, with the daemon's request body and key)
    and reading each answer's JSON, and nothing else. The CPU time of this thread over
    ``seconds`` after ``warmup``."""
    calls = 0

    async def ask(http: aiohttp.ClientSession, partner: int, operation: str, every: float) -> None:
        nonlocal calls
        # Spread as the daemon's partners are (all asking by the window), each on the mark an
        # idle daemon wakes on (service.TICK_MARK): the same wakes, not only the same calls.
        first = time.monotonic() + random.uniform(0, min(every, warmup))
        await asyncio.sleep(math.ceil(first / TICK_MARK) * TICK_MARK - time.monotonic())
        while True:
            asked = time.monotonic()
            now = datetime.now(UTC)
            body = {
                "partnerId": partner,
                "apiKey": procs.partner_key(partner),
                "startRange": iso(now - POLL_WINDOW),
                "endRange": iso(now),
                "sessionKey": "",
                "nResults": procs.PAGE_SIZE,
                "nextId": 0,
            }
            async with http.post(
                f"{url}{SERVICE_PATH}/{operation}",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json; charset=utf-8"},
            ) as response:
                orjson.loads(await response.read())
            calls += 1
            await asyncio.sleep(max(0.0, every - (time.monotonic() - asked)))

    async with aiohttp.ClientSession() as http:
        asks = [
            asyncio.create_task(ask(http, partner, operation, 60 / rate))
            for operation, rate in rates.items()
            if rate > 0
            for partner in partners
        ]
        await asyncio.sleep(warmup)
        cpu, started, calls_before = time.thread_time(), time.monotonic(), calls
        await asyncio.sleep(seconds)
        used, elapsed, made = time.thread_time() - cpu, time.monotonic() - started, calls
        for task in asks:
            task.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
    return {
        "cpu_seconds": round(used, 3),
        "seconds": round(elapsed, 2),
        "percent_of_core": round(used / elapsed * 100, 3),
        "calls_per_minute_per_partner": round(
            (made - calls_before) / elapsed * 60 / len(partners), 2
        ),
        "rates": {operation: round(rate, 2) for operation, rate in rates.items()},
    }


def bench_idle(ctx: Context) -> dict[str, Any]:
    """Daemons with nothing to do, one partner each. The runs are concurrent (each its own
    process, partner, state and topics, one shared empty emulator): an idle daemon barely
    competes for the CPU, and its CPU time is its own whatever runs beside it."""
    plan = ctx.plan
    say(f"idle: {plan.runs} daemon(s), polling every {plan.idle_interval:g}s, for "
        f"{plan.idle_window:g} s")  # fmt: skip
    groups = [[procs.PARTNER_ID + index] for index in range(plan.runs)]
    runs = _idle_daemons(ctx, ctx.dir("idle"), groups)
    per_minute = median([r["cpu_seconds_per_minute"] for r in runs])
    percent = median([r["percent_of_core"] for r in runs])
    calls = median([r["calls_per_minute_per_partner"]["median"] for r in runs])
    interval = f"{plan.idle_interval:g}s"
    return {
        "parameters": {
            "runs": plan.runs,
            "concurrent": True,
            "service": LIVE_SERVICE,
            "completed_interval": interval,
            "started_interval": f"{STARTED_DEFAULT_SECONDS:g}s (default)",
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
            "calls_per_minute_per_partner": round(calls, 2),
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
