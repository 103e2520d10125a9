from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FROZEN_EMULATOR, Emulator, PollerRun, Topics

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "kafka"))

from local_broker import BrokerFailed, LocalBroker  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: $KAFKA_BOOTSTRAP_SERVERS if set, else a local KRaft broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalBroker()
    try:
        broker.start()
    except BrokerFailed as exc:
        broker.cleanup()
        pytest.fail(f"the local Kafka broker did not start:\n{exc}", pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.cleanup()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """An emulator with a frozen clock: tests move time explicitly."""
    emu = Emulator(
        tmp_path,
        *FROZEN_EMULATOR,
    )
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def poller(tmp_path: Path, emulator: Emulator, kafka_bootstrap: str) -> PollerRun:
    return PollerRun(tmp_path, emulator.url, kafka_bootstrap, Topics.unique())
