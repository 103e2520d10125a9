"""Secrets never leak and personal data follows the policy, end to end.

The daemon runs against a broker that requires SASL (SCRAM-SHA-512), with upstream faults,
a partner whose key is rejected and, in a second run, a wrong Kafka password. Everything
it leaves behind (logs at debug level, /metrics, the state file, the events, the dead
letters, `state show`) is searched for the API keys and the Kafka passwords.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    PARTNER_ID,
    Emulator,
    LocalBroker,
    PollerRun,
    Topics,
    consume,
    http_get,
    kill,
    operator_port,
    running,
    wait_until,
)

KAFKA_PASSWORD = "kafka-Pa55word-9e1c"
WRONG_KAFKA_PASSWORD = "not-the-Pa55word-77"
REJECTED_KEY = "rejected-key-0c4f2a"
PII_SALT = "pii-salt-6b2e94"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[LocalBroker]:
    with running(LocalBroker(sasl_users={"poller": KAFKA_PASSWORD})) as broker:
        yield broker


def sasl_poller(
    tmp_path: Path, emulator: Emulator, broker: LocalBroker, password: str
) -> PollerRun:
    poller = PollerRun(tmp_path, emulator.url, broker.sasl_bootstrap, Topics.unique())
    poller.settings["kafka"] = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "poller",
        "request_timeout_ms": 3000,
    }
    poller.settings["log"] = {"level": "debug", "format": "json"}
    poller.settings["glance"] = {"page_size": 25, "request_timeout": "1s"}
    poller.settings["retry"] = {
        "initial_delay": "20ms",
        "max_delay": "200ms",
        "max_retry_after": "200ms",
        "max_attempts": 3,
    }
    poller.settings["events"] = {"pii": "hash"}
    poller.other_partners = {777: REJECTED_KEY}
    poller.extra_env = {"KAFKA_SASL_PASSWORD": password, "POLLER_EVENTS__PII_SALT": PII_SALT}
    return poller


def test_no_secret_appears_anywhere(
    tmp_path: Path, emulator: Emulator, sasl_broker: LocalBroker
) -> None:
    emulator.admin("POST", "/admin/partners", {"partnerId": 777, "apiKey": "the-real-777-key"})
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 400,
            "from": "2026-03-10T10:00:00Z",
            "until": "2026-03-10T11:50:00Z",
            "maxDuration": 600,
        },
    )
    ids = sorted(s["id"] for s in emulator.sessions("ended"))
    emulator.admin("POST", "/admin/faults", {"rate": {"p": 0.2, "seed": 3}})
    emulator.admin(
        "POST",
        "/admin/faults",
        {
            "calls": [
                {
                    "kind": "missing_id",
                    "operation": "PartnerCompletedSessions",
                    "sessionIds": ids[:2],
                }
            ]
        },
    )
    poller = sasl_poller(tmp_path, emulator, sasl_broker, KAFKA_PASSWORD)
    daemon = poller.start()
    try:
        wait_until(
            lambda: (
                len(consume(sasl_broker.bootstrap, poller.topics.completed, idle=0.3, timeout=10))
                >= 398
            ),
            120,
            "the sessions over SASL",
            interval=1.0,
        )
        port = operator_port(poller.log_text())
        assert port is not None
        metrics_body = http_get(port, "/metrics")[1].decode()
        ready_body = http_get(port, "/readyz")[1].decode()
    finally:
        assert kill(daemon, signal.SIGTERM) == 0

    (tmp_path / "wrong").mkdir()
    wrong = sasl_poller(tmp_path / "wrong", emulator, sasl_broker, WRONG_KAFKA_PASSWORD)
    failed = wrong.once(timeout=120)
    # Fatal, distinct, said once: not an outage retried forever.
    assert failed.returncode == 5, failed.stdout + failed.stderr
    said = failed.stdout + failed.stderr
    assert said.count("Kafka refused the daemon's credentials or permissions") == 1, said

    shown = subprocess.run(
        [sys.executable, "-m", "poller", "state", "show", "--config", str(poller.config_file())],
        capture_output=True,
        text=True,
        check=True,
        env=poller.environment(),
    ).stdout
    events = consume(sasl_broker.bootstrap, poller.topics.completed, expect=398)
    letters = consume(sasl_broker.bootstrap, poller.topics.dlq, expect=2)
    assert len(letters) == 2
    haystack: list[tuple[str, str]] = [
        ("daemon log", poller.log_text()),
        ("wrong-password run", failed.stdout + failed.stderr),
        ("/metrics", metrics_body),
        ("/readyz", ready_body),
        ("state show", shown),
        ("events", repr([(e.headers, e.value) for e in events])),
        ("dead letters", repr([(e.headers, e.value) for e in letters])),
        ("emulator log", emulator.log_path.read_text()),
    ]
    for path in tmp_path.rglob("state.sqlite3*"):
        haystack.append((str(path), path.read_bytes().decode("latin-1")))
    secrets = ["it-api-key-5f2b9c", REJECTED_KEY, KAFKA_PASSWORD, WRONG_KAFKA_PASSWORD, PII_SALT]
    for where, text in haystack:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {where}"
    # The redaction is what kept them out, where they would otherwise have been said:
    assert "partner 777: the Glance Activity Service rejected the credentials" in poller.log_text()
    assert "[REDACTED]" not in metrics_body


def test_pii_policies(
    tmp_path: Path, emulator: Emulator, kafka_bootstrap: str, seed_sample: dict[str, Any]
) -> None:
    emulator.admin("POST", "/admin/clock", {"set": "2020-02-14T00:00:00Z"})
    emulator.admin("POST", f"/admin/dataset?partnerId={PARTNER_ID}", seed_sample)
    guests: dict[str, list[dict[str, Any]]] = {}
    for mode in ("keep", "hash", "drop"):
        run = PollerRun(tmp_path / mode, emulator.url, kafka_bootstrap, Topics.unique())
        run.workdir.mkdir()
        run.settings["completed"] = {"start_lookback": "3d"}
        run.settings["events"] = {"pii": mode}
        run.extra_env = {"POLLER_EVENTS__PII_SALT": PII_SALT} if mode == "hash" else {}
        result = run.once()
        assert result.returncode == 0, result.stdout[-2000:]
        assert PII_SALT not in result.stdout + result.stderr
        records = consume(kafka_bootstrap, run.topics.completed, expect=2)
        cobrowse = next(r for r in records if r.key == "57125147")
        guests[mode] = cobrowse.value["session"]["guests"]
    visitor = {mode: g[0] for mode, g in guests.items()}
    assert (visitor["keep"]["name"], visitor["keep"]["email"], visitor["keep"]["phone"]) == (
        "Test guy",
        "jsmith@email.net",
        "314-555-1212",
    )
    for field in ("name", "email", "phone", "ip"):
        assert visitor["hash"][field].startswith("sha256:") and len(visitor["hash"][field]) == 71
        assert visitor["keep"][field] not in visitor["hash"][field]
        assert field not in visitor["drop"]
    # Absent stays absent (null), and everything that is not personal is untouched.
    assert guests["hash"][1]["name"] is None
    for mode in ("hash", "drop"):
        assert visitor[mode]["location"] == visitor["keep"]["location"]
        assert visitor[mode]["startTime"] == visitor["keep"]["startTime"]
    assert os.environ.get("POLLER_EVENTS__PII_SALT") is None
