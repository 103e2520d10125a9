"""Prometheus metrics (prometheus-client), in one registry served on /metrics.

Labels carry partner ids, stream and operation names, topics and bounded reason words:
never a secret, never free text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_NS = "glance_poller"

UPSTREAM_REQUESTS = Counter(
    f"{_NS}_upstream_requests_total",
    "Calls to the Glance Activity Service by operation and outcome "
    "(2xx/4xx/5xx, timeout, connection, truncated)",
    ["partner", "operation", "outcome"],
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    f"{_NS}_upstream_request_seconds",
    "Latency of calls to the Glance Activity Service",
    ["operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RETRIES = Counter(
    f"{_NS}_retries_total",
    "Retries by what was retried (upstream, kafka) and why",
    ["partner", "target", "reason"],
    registry=REGISTRY,
)
PAGES = Counter(
    f"{_NS}_pages_fetched_total", "Session pages fetched", ["partner", "stream"], registry=REGISTRY
)
SESSIONS = Counter(
    f"{_NS}_sessions_fetched_total",
    "Session records fetched (before dedup)",
    ["partner", "stream"],
    registry=REGISTRY,
)
EVENTS = Counter(
    f"{_NS}_events_produced_total",
    "Events acknowledged by Kafka, by topic",
    ["partner", "topic"],
    registry=REGISTRY,
)
RECORDS_READ = Counter(
    f"{_NS}_upstream_records_read_total",
    "Session records read from upstream, as each page arrives (overlap, rescans and listings "
    "included); divided by the events produced: upstream records read per session delivered",
    ["partner", "stream"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    f"{_NS}_duplicates_skipped_total",
    "Records skipped because their event was already emitted",
    ["partner", "stream"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    f"{_NS}_dead_letters_total",
    "Records that could not become events, sent to the dead-letter topic",
    ["partner", "stream"],
    registry=REGISTRY,
)
PRODUCE_ERRORS = Counter(
    f"{_NS}_produce_errors_total",
    "Produce attempts that left events unacknowledged (the batch is retried)",
    ["reason"],
    registry=REGISTRY,
)
PRODUCE_LATENCY = Histogram(
    f"{_NS}_produce_seconds",
    "From handing a batch to the producer to its last acknowledgement",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
UNACKED = Gauge(
    f"{_NS}_unacknowledged_events",
    "Events handed to the producer and not yet acknowledged",
    registry=REGISTRY,
)
STATE_COMMIT = Histogram(
    f"{_NS}_state_commit_seconds",
    "Duration of one state-file transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
CURSOR_LAG = Gauge(
    f"{_NS}_cursor_lag_seconds",
    "Upstream's now minus how far the stream has scanned",
    ["partner", "stream"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    f"{_NS}_last_successful_tick_timestamp_seconds",
    "Unix time of the stream's last successful tick",
    ["partner", "stream"],
    registry=REGISTRY,
)
TICKS = Counter(
    f"{_NS}_ticks_total",
    "Ticks by result (ok, failed)",
    ["partner", "stream", "result"],
    registry=REGISTRY,
)
LATE_COMPLETIONS = Counter(
    f"{_NS}_late_completions_total",
    "Sessions found by the reconciliation sweep after the fast scan had passed their start",
    ["partner"],
    registry=REGISTRY,
)
BUCKETS_MISMATCHED = Gauge(
    f"{_NS}_reconcile_buckets_mismatched",
    "Start-time buckets where upstream still held more completed sessions after a rescan",
    ["partner"],
    registry=REGISTRY,
)
BEYOND_HORIZON = Counter(
    f"{_NS}_sessions_beyond_horizon_total",
    "Sessions still open when their start left the reconcile horizon (never delivered)",
    ["partner"],
    registry=REGISTRY,
)
BROKER_UP = Gauge(
    f"{_NS}_broker_reachable",
    "1 when Kafka answered the last metadata request or acknowledged the last batch",
    registry=REGISTRY,
)
READY = Gauge(f"{_NS}_ready", "1 when /readyz answers 200", registry=REGISTRY)
UPSTREAM_CLOCK_SKEW = Gauge(
    f"{_NS}_upstream_clock_skew_seconds",
    "Upstream's Date minus the host clock, at the last answer",
    registry=REGISTRY,
)
UPSTREAM_CLOCK_BOUNDED = Counter(
    f"{_NS}_upstream_clock_bounded_total",
    "Answers whose Date lay beyond glance.clock_tolerance of the host clock (bounded by it)",
    registry=REGISTRY,
)
CURSOR_IN_FUTURE = Gauge(
    f"{_NS}_cursor_in_future",
    "1 when a stream's stored cursor lies beyond the host clock plus the tolerance",
    ["partner", "stream"],
    registry=REGISTRY,
)
PRODUCER_REPLACED = Counter(
    f"{_NS}_producer_replaced_total",
    "Kafka producers replaced, by why (idempotence state rejected, silent too long)",
    ["why"],
    registry=REGISTRY,
)
LOG_LINES_DROPPED = Counter(
    f"{_NS}_log_lines_dropped_total",
    "Log lines dropped because the log output did not take them (its reader stalled or gone)",
    registry=REGISTRY,
)
