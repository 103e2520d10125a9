"""Fixtures for the emulator's tests: a frozen clock, a state, and the app behind real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from emulator_testkit import API_KEY, PARTNER_ID, T0, Emulator

from poller.emulator.app import create_app
from poller.emulator.clock import EmulatorClock
from poller.emulator.state import EmulatorState


@pytest.fixture
def clock() -> EmulatorClock:
    return EmulatorClock(T0, speed=0)


@pytest.fixture
def state(clock: EmulatorClock) -> EmulatorState:
    return EmulatorState(clock=clock, partners={PARTNER_ID: API_KEY}, seed=7)


@pytest.fixture
async def emulator(state: EmulatorState) -> AsyncIterator[Emulator]:
    server = TestServer(create_app(state))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Emulator(server, session, state)
    finally:
        await server.close()
