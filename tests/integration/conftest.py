from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    FROZEN_EMULATOR,
    Emulator,
    LocalBroker,
    PollerRun,
    Topics,
    running,
)


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
    with running(LocalBroker()) as broker:
        yield broker.bootstrap


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
