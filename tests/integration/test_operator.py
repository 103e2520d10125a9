"""What operators look at: readiness on upstream failure, and the tail command."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys

import orjson

from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    Emulator,
    PollerRun,
    consume,
    http_get,
    kill,
    metric,
    operator_port,
    wait_until,
)


def test_readiness_follows_the_upstream(emulator: Emulator, poller: PollerRun) -> None:
    poller.settings["retry"] = {"initial_delay": "10ms", "max_delay": "50ms", "max_attempts": 2}
    poller.settings["completed"] = {"interval": "300ms"}
    poller.settings["counts"] = {"interval": "300ms"}
    daemon = poller.start()
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "readiness")
        assert http_get(port, "/healthz") == (200, b'{"alive":true}')
        emulator.admin(
            "POST",
            "/admin/faults",
            {"calls": [{"kind": "error500", "operation": "*", "count": 100000}]},
        )
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 30, "/readyz to turn false")
        problems = orjson.loads(http_get(port, "/readyz")[1])["problems"]
        assert any("failed tick" in p for p in problems), problems
        assert http_get(port, "/healthz")[0] == 200, "alive, though not ready"
        text = http_get(port, "/metrics")[1].decode()
        assert metric(text, "glance_poller_ticks_total", result="failed") > 0
        assert metric(text, "glance_poller_upstream_requests_total", outcome="fault") > 0
        emulator.admin("DELETE", "/admin/faults")
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "/readyz to turn true again")
    finally:
        assert kill(daemon, signal.SIGTERM) == 0
    log = poller.log_text()
    assert log.count('"event":"recovered"') >= 1


def test_tail_prints_events_as_lines_or_json_and_filters_by_partner(
    emulator: Emulator, poller: PollerRun
) -> None:
    emulator.admin("POST", "/admin/partners", {"partnerId": 777, "apiKey": "key-777-abcdef"})
    for partner in (PARTNER_ID, 777):
        emulator.admin(
            "POST",
            "/admin/traffic",
            {
                "partnerId": partner,
                "count": 5,
                "from": "2026-03-10T11:00:00Z",
                "until": "2026-03-10T11:30:00Z",
                "maxDuration": 600,
            },
        )
    poller.other_partners = {777: "key-777-abcdef"}
    assert poller.once().returncode == 0
    assert len(consume(poller.bootstrap, poller.topics.completed, expect=10)) == 10
    base = [
        sys.executable,
        "-m",
        "poller",
        "tail",
        "--config",
        str(poller.config_file()),
        "--from-beginning",
    ]

    def tail(*args: str) -> list[str]:
        done = subprocess.run(
            [*base, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=poller.environment(),
            check=True,
        )
        return done.stdout.splitlines()

    lines = tail("--max-events", "10")
    assert len(lines) == 10 and all(" completed " in line and "session=" in line for line in lines)
    mine = tail("--partner", "777", "--json", "--max-events", "5")
    events = [orjson.loads(line) for line in mine]
    assert len(events) == 5
    assert {e["value"]["partnerId"] for e in events} == {777}
    assert all(
        e["headers"]["ce_source"] == "/glance/partners/777"
        and e["key"] == str(e["value"]["session"]["id"])
        for e in events
    )
    started = tail("--topic", poller.topics.started, "--max-events", "3")
    assert len(started) == 3 and all(" started " in line for line in started)


def test_connections_left_half_sent_on_the_operator_port_starve_neither_the_feed_nor_probes(
    emulator: Emulator, poller: PollerRun
) -> None:
    """Found by an adversary: under the usual soft limit of open files (1,024, systemd's), a
    thousand requests left half-sent on the operator port took every descriptor: upstream
    calls failed ("Too many open files") and probes went unanswered. The daemon takes the
    limit its hard limit allows. Here the soft limit is 160 and 200 connections are left open."""
    poller.settings["completed"] = {"interval": "300ms"}

    def few_files() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, hard))

    daemon = subprocess.Popen(
        [PYTHON, "-m", "poller", "run", "--config", str(poller.config_file())],
        stdout=(poller.workdir / "poller.log").open("ab"),
        stderr=subprocess.STDOUT,
        env=poller.environment(),
        preexec_fn=few_files,
    )
    held: list[socket.socket] = []
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "readiness")
        for _ in range(200):
            half = socket.create_connection(("127.0.0.1", port))
            half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            held.append(half)
        emulator.admin(
            "POST",
            "/admin/sessions",
            {
                "partnerId": PARTNER_ID,
                "sessions": [
                    {"startTime": "2026-03-10T11:58:00Z", "endTime": "2026-03-10T11:59:00Z"}
                ],
            },
        )
        records = consume(poller.bootstrap, poller.topics.completed, expect=1, timeout=60)
        assert len(records) == 1
        assert http_get(port, "/readyz")[0] == 200
    finally:
        for half in held:
            half.close()
        assert kill(daemon, signal.SIGTERM) == 0
    assert "Too many open files" not in poller.log_text()
