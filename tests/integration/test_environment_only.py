"""The daemon as an image runs it: no configuration file, the environment alone."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.integration.harness import (
    API_KEY,
    CLOCK_TRUSTED,
    PARTNER_ID,
    PYTHON,
    Emulator,
    Topics,
    consume,
    free_port,
    http_get,
    kill,
    wait_until,
)


def test_the_environment_alone_starts_a_ready_daemon(
    tmp_path: Path, emulator: Emulator, kafka_bootstrap: str
) -> None:
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 20,
            "from": "2026-03-10T11:00:00Z",
            "until": "2026-03-10T11:40:00Z",
            "maxDuration": 600,
        },
    )
    topics = Topics.unique()
    port = free_port()
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    env = base | {
        "GLANCE_PARTNER_ID": str(PARTNER_ID),
        "GLANCE_API_KEY": API_KEY,
        "GLANCE_BASE_URL": emulator.url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "POLLER_STATE_PATH": str(tmp_path / "state.sqlite3"),
        "POLLER_SERVER__HOST": "127.0.0.1",
        "POLLER_SERVER__PORT": str(port),
        "POLLER_TOPICS__COMPLETED": topics.completed,
        "POLLER_TOPICS__STARTED": topics.started,
        "POLLER_TOPICS__COUNTS": topics.counts,
        "POLLER_TOPICS__DLQ": topics.dlq,
        "POLLER_COMPLETED__INTERVAL": "1s",
        "POLLER_STARTED__INTERVAL": "1s",
        "POLLER_RECONCILE__INTERVAL": "1s",
        "POLLER_GLANCE__CLOCK_TOLERANCE": CLOCK_TRUSTED,  # the emulator's clock is in 2026-03
        "POLLER_LOG__FORMAT": "json",
    }
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen([PYTHON, "-m", "poller", "run"], env=env, stdout=log, stderr=log)
    log.close()
    try:
        wait_until(lambda: daemon.poll() is not None or _ready(port), 60, "/readyz to answer 200")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        assert len(consume(kafka_bootstrap, topics.completed, expect=20)) == 20
    finally:
        assert kill(daemon, signal.SIGTERM) == 0


def _ready(port: int) -> bool:
    try:
        return http_get(port, "/readyz")[0] == 200
    except OSError:
        return False
