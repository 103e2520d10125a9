"""The Grafana dashboard and the alert rules ask only for metrics the daemon exports.

The daemon runs against the emulator and the real broker, with completed sessions, an open
one and a damaged record to go through, until a tick of each stream has succeeded; then its
/metrics is read. Every metric name in deploy/grafana/glance-poller.json (panel queries and
template variables) and in deploy/prometheus/alerts.yml must be one it exports:

- declared: prometheus-client writes `# HELP` and `# TYPE` for every metric family, labelled
  ones included before their first sample; a name may be the family's own or, by its type,
  one of the series it produces (a counter's `_total`, a histogram's `_bucket`, `_sum` and
  `_count`);
- and, apart from the few that only rare events produce (listed below with the reason),
  present with at least one sample after this run: a name that is declared but never written
  would draw an empty panel forever.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import yaml

from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    PollerRun,
    consume,
    http_get,
    kill,
    metric,
    operator_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "glance-poller.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Written only when something rare happens, so no sample after an ordinary run.
RARE = {
    # A session still open when its start leaves the 24 h horizon.
    "glance_poller_sessions_beyond_horizon_total": "needs a session open for 24 hours",
}
# Series Prometheus itself writes for every target.
SCRAPE_SERIES = {"up"}
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_queries() -> list[str]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def metric_names(queries: list[str]) -> set[str]:
    """The metric names a PromQL query reads: glance-poller's, and Prometheus's own `up`."""
    names = set()
    for query in queries:
        # Label values and label names are not metric names.
        query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
        query = re.sub(r"\{[^}]*\}", "{}", query)
        query = re.sub(
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", query
        )
        for word in NAME.findall(query):
            if word.startswith("glance_poller_") or word in SCRAPE_SERIES:
                names.add(word)
    return names


def exported(text: str) -> tuple[set[str], set[str]]:
    """(the series names the declared families produce, the series names with a sample)."""
    declared: set[str] = set()
    sampled: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            declared |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            sampled.add(NAME.match(line).group(0))  # type: ignore[union-attr]
    return declared, sampled


def drive(emulator: Emulator, poller: PollerRun) -> str:
    """Run the daemon through sessions of every kind; its /metrics once every stream ticked."""
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 30,
            "from": "2026-03-10T11:00:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 300,
            "seed": 5,
        },
    )
    ended = sorted(session["id"] for session in emulator.sessions("ended"))
    assert len(ended) == 30
    emulator.admin(
        "POST",
        "/admin/faults",
        {"calls": [{"kind": "mistyped", "operation": "PartnerCompletedSessions",
                    "sessionIds": ended[:1]}]},
    )  # fmt: skip
    emulator.admin(
        "POST",
        "/admin/sessions",
        {
            "partnerId": PARTNER_ID,
            "sessions": [
                {
                    "startTime": "2026-03-10T11:59:00Z",
                    "endTime": None,
                    "status": "X",
                    "userName": "agent.one.glance.net",
                    "partnerUserId": "puid-1",
                }
            ],
        },
    )
    poller.settings["counts"] = {"interval": "1s"}
    daemon = poller.start()
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None

        def scrape() -> str:
            status, body = http_get(port, "/metrics")
            assert status == 200
            return body.decode()

        def every_stream_ticked() -> bool:
            text = scrape()
            return (
                metric(text, "glance_poller_ready") == 1
                and metric(text, "glance_poller_dead_letters_total") >= 1
                and all(
                    metric(text, "glance_poller_ticks_total", stream=stream, result="ok") >= 1
                    for stream in ("completed", "reconcile", "started", "counts")
                )
            )

        wait_until(every_stream_ticked, 90, "a successful tick of every stream and a dead letter")
        text = scrape()
    finally:
        assert kill(daemon, signal.SIGTERM) == 0, poller.log_text()[-2000:]
    # What the metrics say reached Kafka did: 29 events and one dead letter.
    assert len(consume(poller.bootstrap, poller.topics.completed, expect=29)) == 29
    assert len(consume(poller.bootstrap, poller.topics.dlq, expect=1)) == 1
    return text


def test_dashboard_and_alerts_ask_only_for_exported_metrics(
    emulator: Emulator, poller: PollerRun
) -> None:
    text = drive(emulator, poller)
    declared, sampled = exported(text)
    used = {
        "dashboard": metric_names(dashboard_queries()),
        "alert rules": metric_names(alert_queries()),
    }
    assert len(used["dashboard"]) >= 10, f"the dashboard's queries were not read: {used}"
    assert "glance_poller_ready" in used["alert rules"], f"the rules were not read: {used}"
    for where, names in used.items():
        unknown = sorted(names - declared - SCRAPE_SERIES)
        assert not unknown, f"the {where} use metrics the daemon does not export: {unknown}"
        empty = sorted(names - sampled - SCRAPE_SERIES - set(RARE))
        assert not empty, f"the {where} use metrics that got no sample in this run: {empty}"


def test_metric_names_are_read_from_queries_not_from_labels() -> None:
    # The name extraction the test above relies on.
    queries = [
        'sum by (partner, stream) (increase(glance_poller_dead_letters_total{stream="x"}[5m]))',
        "histogram_quantile(0.99, sum by (le) (rate(glance_poller_produce_seconds_bucket[1m])))",
        'up{job=~".*glance_poller_fake.*"} == 0',
        'label_values(glance_poller_cursor_lag_seconds{instance=~"$instance"}, partner)',
    ]
    assert metric_names(queries) == {
        "glance_poller_dead_letters_total",
        "glance_poller_produce_seconds_bucket",
        "glance_poller_cursor_lag_seconds",
        "up",
    }


def test_exported_names_follow_each_family_type() -> None:
    text = "\n".join(
        [
            "# HELP glance_poller_events_produced_total Events",
            "# TYPE glance_poller_events_produced_total counter",
            "# HELP glance_poller_produce_seconds Produce",
            "# TYPE glance_poller_produce_seconds histogram",
            'glance_poller_produce_seconds_bucket{le="0.005"} 1.0',
            "# HELP glance_poller_ready Ready",
            "# TYPE glance_poller_ready gauge",
            "glance_poller_ready 1.0",
        ]
    )
    declared, sampled = exported(text)
    assert {
        "glance_poller_events_produced_total",
        "glance_poller_produce_seconds_bucket",
        "glance_poller_produce_seconds_sum",
        "glance_poller_produce_seconds_count",
        "glance_poller_ready",
    } <= declared
    assert "glance_poller_produce_seconds" not in declared
    assert "glance_poller_events_produced" not in declared
    assert sampled == {"glance_poller_produce_seconds_bucket", "glance_poller_ready"}
