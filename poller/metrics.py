"""Prometheus metrics (prometheus-client). Labels carry partner ids and stream names,
never a secret."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LATE_COMPLETIONS = Counter(
    "glance_poller_late_completions_total",
    "Sessions found by the reconciliation sweep after the fast scan had passed their start",
    ["partner"],
)
BUCKETS_MISMATCHED = Gauge(
    "glance_poller_reconcile_buckets_mismatched",
    "Start-time buckets where upstream still held more completed sessions after a rescan",
    ["partner"],
)
BEYOND_HORIZON = Counter(
    "glance_poller_sessions_beyond_horizon_total",
    "Sessions still open when their start left the reconcile horizon (never delivered)",
    ["partner"],
)
