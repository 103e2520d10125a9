"""deploy/grafana/glance-poller.json: an importable dashboard whose queries are valid PromQL.

Every panel query is parsed by promtool (as a recording rule in a throw-away rules file, the
Grafana variables replaced by what Grafana would put there), and the panels operators asked
for are there. That the metric names exist in the daemon's /metrics is checked by
tests/integration/test_dashboard_metrics.py. promtool comes from `make deploy-tools`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "glance-poller.json"
# What each asked-for panel shows, by the series its queries read.
REQUIRED = {
    "feed freshness": "glance_poller_cursor_lag_seconds",
    "events per topic": "glance_poller_events_produced_total",
    "late completions": "glance_poller_late_completions_total",
    "dead letters": "glance_poller_dead_letters_total",
    "upstream requests by outcome": "glance_poller_upstream_requests_total",
    "upstream latency": "glance_poller_upstream_request_seconds_bucket",
    "produce latency": "glance_poller_produce_seconds_bucket",
    "unacknowledged events": "glance_poller_unacknowledged_events",
    "readiness": "glance_poller_ready",
}
# What Grafana substitutes for its variables, near enough for a parser.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$partner": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make deploy-tools`", pytrace=False)
    rules = []
    for index, (_, expr) in enumerate(queries(dashboard)):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promql_check_refuses_a_broken_query(tmp_path: Path) -> None:
    # The check above is worth something only if promtool says no to a bad query.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make deploy-tools`", pytrace=False)
    path = tmp_path / "broken.yml"
    rule = {"record": "dashboard:broken", "expr": "sum by (le (rate(x[5m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [rule]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize(("panel", "series"), sorted(REQUIRED.items()))
def test_the_asked_for_panels_are_there(dashboard: dict[str, Any], panel: str, series: str) -> None:
    titles = [title for title, expr in queries(dashboard) if series in expr]
    assert titles, f"no panel shows {panel} ({series})"


def test_panels_use_the_chosen_data_source_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
