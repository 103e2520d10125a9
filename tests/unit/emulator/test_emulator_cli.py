"""The command line: arguments, and a real server process started and stopped."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import pytest
from emulator_testkit import SERVICE, T0

from poller.emulator.cli import add_arguments, build_state, run
from poller.emulator.dataset import SEED_SAMPLE_PATH

REPO = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = parse()
    assert (args.host, args.port, args.partner, args.date_format) == (
        "127.0.0.1",
        8080,
        None,
        "iso",
    )
    state = build_state(args)
    assert state.partners == {12345: "demo-api-key"}
    assert state.live == {} and state.faults.rate is None


def test_arguments_build_the_state() -> None:
    args = parse(
        "--partner", "1:key:with:colons",
        "--partner", "2:other",
        "--dataset", str(SEED_SAMPLE_PATH),
        "--traffic-rate", "6",
        "--backlog-hours", "1",
        "--clock-start", "2024-03-15T12:00:00Z",
        "--clock-speed", "0",
        "--fault-rate", "0.1",
        "--fault-kinds", "error500,reset",
        "--date-format", "ms",
        "--max-duration", "600",
    )  # fmt: skip
    state = build_state(args)
    assert state.partners == {1: "key:with:colons", 2: "other"}
    assert len(state.store.partner(1)) == 2 and len(state.store.partner(2)) == 0
    assert state.clock.now() == T0 and state.clock.speed == 0
    assert state.faults.rate is not None and state.faults.rate.kinds == ("error500", "reset")
    assert state.date_format == "ms" and state.profile.max_duration == 600
    assert state.catch_up() > 0  # an hour of backlog at 6 a minute, for each partner
    assert len(state.store.partner(2)) > 20


@pytest.mark.parametrize(
    "argv", [["--partner", "nope"], ["--fault-kinds", "meteor"], ["--clock-start", "soon"]]
)
def test_bad_arguments_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_unusable_arguments_exit_with_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run() sets up the emulator's log handler; keep it away from the test session's logging.
    monkeypatch.setattr("poller.emulator.cli._configure_logging", lambda level: None)
    assert run(parse("--dataset", str(tmp_path / "missing.json"))) == 2
    assert run(parse("--traffic-rate", "-1")) == 2


async def test_the_server_process_starts_answers_and_stops_cleanly(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller.emulator",
        "--port", "0",
        "--port-file", str(port_file),
        "--partner", "12345:very-secret-key",
        "--dataset", str(SEED_SAMPLE_PATH),
        "--clock-start", "2024-03-15T12:00:00Z",
        "--clock-speed", "0",
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        for _ in range(400):
            if port_file.exists() or process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert port_file.exists(), "the emulator did not start"
        base = f"http://127.0.0.1:{port_file.read_text().strip()}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/admin/health") as response:
                assert await response.json() == {"ok": True}
            params = {
                "partnerId": 12345,
                "apiKey": "very-secret-key",
                "type": "",
                "status": "C",
                "startRange": "2020-02-01T00:00:00Z",
                "endRange": "2020-03-01T00:00:00Z",
            }
            async with http.post(base + SERVICE + "PartnerSessionCounts", json=params) as response:
                assert response.status == 200
                assert parsedate_to_datetime(response.headers["Date"]) == T0
                assert sum(row["count"] for row in (await response.json())["d"]) == 2
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert "POST /services/activityservice.asmx/PartnerSessionCounts 200" in log
    assert "very-secret-key" not in log
    assert not port_file.exists()  # removed on the way out
