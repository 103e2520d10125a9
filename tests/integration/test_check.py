"""`glance-poller check` as a real process against the emulator and the real broker."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

# On sys.path by tests/integration/harness.py.
from local_broker import LocalBroker, free_port

from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    PollerRun,
    Topics,
    consume,
    http_get,
    kill,
    log_events,
    operator_port,
    running,
    wait_until,
)

WRONG_KEY = "wrong-key-123456"
SASL_USER, SASL_PASSWORD = "poller", "check-sasl-pass-7"


def run_check(
    poller: PollerRun,
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    secrets: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], dict[str, tuple[str, str]]]:
    """Runs the command; returns the process and its table as check -> (result, detail)."""
    result = subprocess.run(
        [sys.executable, "-m", "poller", "check", "--config", str(poller.config_file()), *args],
        capture_output=True,
        text=True,
        env=poller.environment() | (env or {}),
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for secret in (poller.api_key, *poller.other_partners.values(), *secrets):
        assert secret not in output
    rows: dict[str, tuple[str, str]] = {}
    for check, outcome, detail in table(result.stdout):
        assert check not in rows, f"row {check!r} twice"
        rows[check] = (outcome, detail)
    return result, rows


def table(stdout: str) -> list[tuple[str, str, str]]:
    """The printed table's rows, cut into columns where the rule under the header says."""
    lines = stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("-"))
    rule = lines[index]
    assert lines[index - 1].split() == ["check", "result", "detail"]
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    assert len(starts) == 3, rule
    rows = []
    for line in lines[index + 1 :]:
        if not line.strip():
            break
        rows.append(
            (
                line[: starts[1]].strip(),
                line[starts[1] : starts[2]].strip(),
                line[starts[2] :].strip(),
            )
        )
    return rows


def topic_rows(rows: dict[str, tuple[str, str]], topics: Topics) -> dict[str, tuple[str, str]]:
    found = {}
    for role, name in vars(topics).items():
        found[role] = rows[f"topic {name} ({role})"]
    return found


def verdict(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


def partitions_of(bootstrap: str, names: list[str]) -> dict[str, int]:
    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics()
        finally:
            await admin.close()
        return {
            t["topic"]: len(t["partitions"])
            for t in described
            if t["topic"] in names and t["error_code"] == 0
        }

    return asyncio.run(describe())


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_create_topics_then_everything_passes(poller: PollerRun, kafka_bootstrap: str) -> None:
    names = list(vars(poller.topics).values())
    assert partitions_of(kafka_bootstrap, names) == {}

    result, rows = run_check(poller, "--create-topics", "--partitions", "2")

    assert result.returncode == 0, result.stdout
    assert verdict(result.stdout) == "all checks passed"
    assert rows["config"][0] == "ok"
    assert rows[f"partner {PARTNER_ID} credentials"] == ("ok", f"accepted by {poller.emulator_url}")
    assert rows[f"kafka {kafka_bootstrap}"] == ("ok", "reachable, 1 broker(s)")
    for role, (outcome, detail) in topic_rows(rows, poller.topics).items():
        assert (outcome, detail) == ("created", "2 partition(s), replication factor 1"), role
    assert partitions_of(kafka_bootstrap, names) == dict.fromkeys(names, 2)

    again, rows = run_check(poller)

    assert again.returncode == 0, again.stdout
    assert verdict(again.stdout) == "all checks passed"
    for role, (outcome, detail) in topic_rows(rows, poller.topics).items():
        assert (outcome, detail) == ("ok", "exists, 2 partition(s)"), role
    assert again.stderr == ""


def test_rejected_api_key_fails_without_showing_it(poller: PollerRun) -> None:
    poller.api_key = WRONG_KEY

    result, rows = run_check(poller, "--create-topics")

    assert result.returncode == 1
    assert rows[f"partner {PARTNER_ID} credentials"] == (
        "FAILED",
        "rejected (wrong API key or unknown partner)",
    )
    # Only the credentials failed: Kafka and the topics are checked all the same.
    assert verdict(result.stdout) == "1 check(s) failed"
    assert WRONG_KEY not in result.stdout + result.stderr


def test_each_partner_is_checked_on_its_own(emulator: Emulator, poller: PollerRun) -> None:
    poller.other_partners = {777: "other-partner-key-42"}  # unknown to the emulator

    result, rows = run_check(poller, "--create-topics")

    assert result.returncode == 1
    assert rows[f"partner {PARTNER_ID} credentials"][0] == "ok"
    assert rows["partner 777 credentials"] == (
        "FAILED",
        "rejected (wrong API key or unknown partner)",
    )
    assert verdict(result.stdout) == "1 check(s) failed"


def test_unreachable_broker_fails_fast(emulator: Emulator, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    poller = PollerRun(tmp_path, emulator.url, f"127.0.0.1:{port}", Topics.unique())
    started = time.monotonic()

    result, rows = run_check(poller, timeout=60)

    assert time.monotonic() - started < 30
    assert result.returncode == 1
    outcome, detail = rows[f"kafka 127.0.0.1:{port}"]
    assert outcome == "FAILED"
    assert f"127.0.0.1:{port}" in detail and "Connect call failed" in detail
    assert rows[f"partner {PARTNER_ID} credentials"][0] == "ok"
    assert {r for r, _ in topic_rows(rows, poller.topics).values()} == {"skipped"}
    assert verdict(result.stdout) == "1 check(s) failed (4 skipped)"
    # aiokafka's own error lines are folded into the table, not printed.
    assert "Unable connect" not in result.stderr


def test_silent_broker_is_given_up_on_after_the_timeout(
    emulator: Emulator, tmp_path: Path, silent_port: int
) -> None:
    poller = PollerRun(tmp_path, emulator.url, f"127.0.0.1:{silent_port}", Topics.unique())
    started = time.monotonic()

    result, rows = run_check(poller, "--timeout", "2", timeout=60)

    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert rows[f"kafka 127.0.0.1:{silent_port}"] == ("FAILED", "no answer within 2s")


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[LocalBroker]:
    with running(LocalBroker(sasl_users={SASL_USER: SASL_PASSWORD})) as broker:
        yield broker


def test_kafka_security_settings_are_used(
    emulator: Emulator, tmp_path: Path, sasl_broker: LocalBroker
) -> None:
    poller = PollerRun(tmp_path, emulator.url, sasl_broker.sasl_bootstrap, Topics.unique())
    poller.settings = {
        "kafka": {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": SASL_USER,
        }
    }
    kafka_row = f"kafka {sasl_broker.sasl_bootstrap}"

    result, rows = run_check(
        poller,
        "--create-topics",
        env={"KAFKA_SASL_PASSWORD": SASL_PASSWORD},
        secrets=(SASL_PASSWORD,),
    )

    assert result.returncode == 0, result.stdout
    assert rows[kafka_row] == ("ok", "reachable, 1 broker(s)")
    names = list(vars(poller.topics).values())
    assert partitions_of(sasl_broker.bootstrap, names) == dict.fromkeys(names, 3)

    wrong = "not-the-sasl-pass"
    started = time.monotonic()
    result, rows = run_check(
        poller, env={"KAFKA_SASL_PASSWORD": wrong}, secrets=(SASL_PASSWORD, wrong)
    )

    assert time.monotonic() - started < 30
    assert result.returncode == 1
    outcome, detail = rows[kafka_row]
    assert outcome == "FAILED"
    assert "authentication" in detail.lower(), detail


def test_missing_topic_is_a_warning_when_the_broker_auto_creates_it(
    poller: PollerRun, kafka_bootstrap: str
) -> None:
    first, _ = run_check(poller, "--create-topics")
    assert first.returncode == 0, first.stdout
    poller.topics = replace(poller.topics, dlq=Topics.unique().dlq)

    result, rows = run_check(poller)

    # The local broker runs with auto.create.topics.enable=true: the daemon works as it is.
    assert result.returncode == 0, result.stdout
    assert rows[f"topic {poller.topics.dlq} (dlq)"] == (
        "warning",
        "missing: the broker creates it on first use (auto.create.topics.enable=true, "
        "1 partition(s), replication factor 1); --create-topics to choose",
    )
    assert rows[f"topic {poller.topics.completed} (completed)"][0] == "ok"
    assert verdict(result.stdout) == "all checks passed (1 warning(s))"
    # Checking never creates it (the broker auto-creates topics that a client names).
    assert partitions_of(kafka_bootstrap, [poller.topics.dlq]) == {}


@pytest.fixture(scope="module")
def strict_broker() -> Iterator[LocalBroker]:
    broker = LocalBroker()
    broker.properties["auto.create.topics.enable"] = "false"
    with running(broker) as started:
        yield started


def test_missing_topic_fails_when_the_broker_does_not_auto_create(
    emulator: Emulator, tmp_path: Path, strict_broker: LocalBroker
) -> None:
    poller = PollerRun(tmp_path, emulator.url, strict_broker.bootstrap, Topics.unique())

    result, rows = run_check(poller)

    assert result.returncode == 1, result.stdout
    for role, (outcome, detail) in topic_rows(rows, poller.topics).items():
        assert (outcome, detail) == (
            "FAILED",
            "missing and the broker does not create topics (auto.create.topics.enable=false): "
            "create it, or run with --create-topics",
        ), role
    assert verdict(result.stdout) == "4 check(s) failed"

    created, rows = run_check(poller, "--create-topics")

    assert created.returncode == 0, created.stdout
    assert {r for r, _ in topic_rows(rows, poller.topics).values()} == {"created"}


def test_a_daemon_whose_topic_is_missing_names_it_and_goes_on_once_it_is_created(
    emulator: Emulator, tmp_path: Path, strict_broker: LocalBroker
) -> None:
    """Found by an adversary: the feed retried for ever, /readyz said "kafka: unreachable"
    of a broker that answered, and one warning was the only clue."""
    poller = PollerRun(tmp_path, emulator.url, strict_broker.bootstrap, Topics.unique())
    poller.settings["completed"] = {"interval": "500ms"}
    poller.settings["retry"] = {"initial_delay": "100ms", "max_delay": "500ms"}
    poller.settings["kafka"] = {"request_timeout_ms": 3000}
    emulator.admin(
        "POST",
        "/admin/sessions",
        {
            "partnerId": PARTNER_ID,
            "sessions": [{"startTime": "2026-03-10T11:40:00Z", "endTime": "2026-03-10T11:45:00Z"}],
        },
    )
    ours = (poller.topics.started, poller.topics.completed, poller.topics.counts)
    process = poller.start()
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 60, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None

        def problems() -> list[str]:
            problems: list[str] = orjson.loads(http_get(port, "/readyz")[1])["problems"]
            return problems

        def named() -> bool:
            found = problems()
            return any(
                p.startswith(f"kafka: topic {t} does not exist") for p in found for t in ours
            )

        wait_until(named, 60, "a missing topic named")
        assert "kafka: unreachable" not in problems()
        errors = log_events(
            poller.log_text(),
            "the topic does not exist and the broker does not create it; events wait for it "
            "(create it, or run `glance-poller check --create-topics`)",
        )
        assert errors and {e["topic"] for e in errors} <= set(ours)
        assert len(errors) == len({e["topic"] for e in errors}), "once per topic"
        created, _ = run_check(poller, "--create-topics")
        assert created.returncode == 0, created.stdout
        assert len(consume(strict_broker.bootstrap, poller.topics.completed, expect=1)) == 1
        wait_until(lambda: not any(p.startswith("kafka") for p in problems()), 60, "kafka fine")
    finally:
        assert kill(process, signal.SIGTERM) == 0


def test_invalid_config_is_reported_by_key_and_nothing_connects(
    emulator: Emulator, tmp_path: Path
) -> None:
    poller = PollerRun(tmp_path, emulator.url, "127.0.0.1:9", Topics.unique())
    poller.settings = {"completed": {"interval": "soon"}, "mystery": {"x": 1}}
    calls_before = emulator.stats()

    result = subprocess.run(
        [sys.executable, "-m", "poller", "check", "--config", str(poller.config_file())],
        capture_output=True,
        text=True,
        env=poller.environment(),
        timeout=60,
        check=False,
    )

    assert result.returncode == 1  # check's contract is 0/1, not the daemon's 2
    rows = table(result.stdout)
    assert {check for check, _, _ in rows} == {"config"}
    assert {outcome for _, outcome, _ in rows} == {"FAILED"}
    details = [detail for _, _, detail in rows]
    assert any(detail.startswith("completed.interval: ") for detail in details)
    assert any(detail.startswith("mystery: ") for detail in details)
    assert verdict(result.stdout) == f"{len(rows)} check(s) failed"
    assert emulator.stats() == calls_before


def test_missing_api_key_is_a_config_problem(emulator: Emulator, tmp_path: Path) -> None:
    poller = PollerRun(tmp_path, emulator.url, "127.0.0.1:9", Topics.unique())
    env = {k: v for k, v in poller.environment().items() if not k.startswith("IT_KEY_")}

    result = subprocess.run(
        [sys.executable, "-m", "poller", "check", "--config", str(poller.config_file())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert [(c, o) for c, o, _ in table(result.stdout)] == [("config", "FAILED")]
    assert f"partners[0].api_key_env: partner {PARTNER_ID}" in result.stdout


def _accepted_nothing(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        connection, _ = sock.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A listening socket nobody should connect to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def test_offline_checks_the_configuration_and_contacts_nothing(
    tmp_path: Path, listening: socket.socket
) -> None:
    port = int(listening.getsockname()[1])
    # A silent service and a silent broker: any attempt to reach either would hang till the
    # timeout and leave a connection in the socket's backlog.
    poller = PollerRun(tmp_path, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", Topics.unique())
    started = time.monotonic()

    result, rows = run_check(poller, "--offline", "--timeout", "20")

    assert time.monotonic() - started < 15
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows["config"][0] == "ok"
    assert rows[f"partner {PARTNER_ID} credentials"] == ("skipped", "offline: not contacted")
    assert rows[f"kafka 127.0.0.1:{port}"] == ("skipped", "offline: not contacted")
    assert verdict(result.stdout) == "all checks passed (2 skipped)"
    assert _accepted_nothing(listening)


def test_offline_lists_every_problem_by_key_and_exits_2(
    tmp_path: Path, listening: socket.socket
) -> None:
    port = int(listening.getsockname()[1])
    poller = PollerRun(tmp_path, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", Topics.unique())
    poller.settings = {"completed": {"interval": "soon"}, "mystery": {"x": 1}}

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "poller",
            "check",
            "--offline",
            "--config",
            str(poller.config_file()),
        ],
        capture_output=True,
        text=True,
        env=poller.environment(),
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    rows = table(result.stdout)
    assert {(check, outcome) for check, outcome, _ in rows} == {("config", "FAILED")}
    details = [detail for _, _, detail in rows]
    assert any(detail.startswith("completed.interval: ") for detail in details)
    assert any(detail.startswith("mystery: ") for detail in details)
    assert verdict(result.stdout) == f"{len(rows)} check(s) failed"
    assert _accepted_nothing(listening)
