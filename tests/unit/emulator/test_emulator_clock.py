from datetime import UTC, datetime, timedelta

import pytest

from poller.emulator.clock import EmulatorClock

T0 = datetime(2024, 3, 15, 12, 0, tzinfo=UTC)


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def test_runs_at_its_speed_from_its_start() -> None:
    real = FakeMonotonic()
    clock = EmulatorClock(T0, speed=60, monotonic=real)
    assert clock.now() == T0
    real.value += 2
    assert clock.now() == T0 + timedelta(minutes=2)
    assert clock.now().tzinfo is not None


def test_frozen_clock_moves_only_when_told() -> None:
    real = FakeMonotonic()
    clock = EmulatorClock(T0, speed=0, monotonic=real)
    real.value += 3600
    assert clock.now() == T0
    clock.advance(6 * 3600)
    assert clock.now() == T0 + timedelta(hours=6)
    clock.set(datetime(2020, 1, 1, tzinfo=UTC))
    assert clock.now() == datetime(2020, 1, 1, tzinfo=UTC)


def test_changing_speed_does_not_make_time_jump() -> None:
    real = FakeMonotonic()
    clock = EmulatorClock(T0, speed=1, monotonic=real)
    real.value += 10
    before = clock.now()
    clock.set_speed(100)
    assert clock.now() == before
    real.value += 1
    assert clock.now() == before + timedelta(seconds=100)
    assert clock.speed == 100


def test_defaults_to_real_time() -> None:
    clock = EmulatorClock()
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 5
    assert clock.speed == 1.0


@pytest.mark.parametrize("speed", [-1.0, float("nan"), float("inf")])
def test_refuses_impossible_speeds(speed: float) -> None:
    with pytest.raises(ValueError):
        EmulatorClock(T0, speed=speed)


def test_refuses_naive_instants() -> None:
    with pytest.raises(ValueError):
        EmulatorClock(datetime(2024, 1, 1))  # naive on purpose
