"""The chaos soak, three minutes of it with a fixed seed, as part of the suite.

SLOW: three minutes of chaos, then up to four of catch-up and comparison (tools/soak.py: the
broker and the daemon stopped, killed and restarted, upstream faults and throttling switched on
and off, the emulator clock moved, bad records and one record too large for Kafka planted).
It runs its own broker (it must stop and restart it), whatever KAFKA_BOOTSTRAP_SERVERS says.
`make soak` runs the long one; `python tools/soak.py --minutes 3 --seed 7` runs this one by hand,
with its evidence (daemon log, broker log, JSON report) kept under .run/.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = 7
MINUTES = 3


@pytest.mark.timeout(1500)
def test_a_three_minute_seeded_soak_loses_nothing(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(REPO / "tools" / "soak.py"),
        *("--minutes", str(MINUTES), "--seed", str(SEED), "--report", str(report)),
        *("--workdir", str(tmp_path / "soak")),
    ]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    lines = run.stdout.strip().splitlines()
    tail = "\n".join(lines[-30:]) + "\n" + run.stderr[-3000:]
    assert lines, f"the soak printed nothing:\n{tail}"
    verdict = lines[-1]
    assert verdict.startswith("soak verdict: "), f"no verdict line last:\n{tail}"
    assert f"seed={SEED} minutes={MINUTES}" in verdict
    assert verdict.startswith("soak verdict: PASS"), f"the soak failed:\n{tail}"
    assert run.returncode == 0, tail
    result = json.loads(report.read_text())
    assert result["passed"] and result["lost"] == 0
    assert result["dead_letters_found"] == result["dead_letters_expected"] > 0
    assert result["sessions"] > 100
    counts = result["counts"]
    # The chaos did happen.
    assert counts["daemon_kills"] + counts["daemon_terms"] > 0
    assert counts["broker_restarts"] > 0


# -- the soak's own arithmetic (no broker needed) ------------------------------------------------


def _soak_module() -> Any:
    spec = importlib.util.spec_from_file_location("soak_tool", REPO / "tools" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_tool", module)
    spec.loader.exec_module(module)
    return module


def test_the_clock_history_says_when_an_end_became_visible() -> None:
    soak = _soak_module()
    clock = soak.ClockLog()
    clock.record(1000.0, 5000.0, 1.0)  # host 1000 = emulated 5000, running at speed 1
    clock.record(1010.0, 5610.0, 1.0)  # at host 1010 the clock jumps 600 s forward
    clock.record(1020.0, 5560.0, 1.0)  # at host 1020 it moves 60 s back
    assert clock.emu_at(1005.0) == 5005.0
    assert clock.emu_at(1015.0) == 5615.0
    # Reached while running: at host 1003.
    assert clock.visible(5003.0, until=1100.0) == (1003.0, 1003.0)
    # Jumped over: visible from the jump.
    assert clock.visible(5300.0, until=1100.0) == (1010.0, 1010.0)
    # Visible after the jump, hidden again by the move back, visible again at host 1035.
    assert clock.visible(5575.0, until=1100.0) == (1010.0, 1035.0)
    # Not reached yet.
    assert clock.visible(9000.0, until=1100.0) == (None, None)


def test_the_verdict_line() -> None:
    soak = _soak_module()
    result = {
        "passed": False,
        "seed": 7,
        "minutes": 3.0,
        "sessions": 10,
        "lost": 2,
        "duplicates_same_ce_id": 1,
        "duplicates_other_ce_id": 0,
        "dead_letters_expected": 6,
        "dead_letters_found": 5,
        "worst_delay_s": 12.5,
        "counts": {name: 1 for name in vars(soak.Counts())},
        "without": [],
    }
    line = soak.verdict_line(result)
    assert line.startswith(
        "soak verdict: FAIL seed=7 minutes=3 sessions=10 lost=2 duplicates_same_ce_id=1 "
        "duplicates_other_ce_id=0 dead_letters_expected=6 found=5 worst_delay_s=12.5 "
        "broker_restarts=1"
    )
    assert "daemon_kills=1" in line
