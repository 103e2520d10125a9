"""The chaos soak, three minutes of it with a fixed seed, as part of the suite.

SLOW: three minutes of chaos, then up to four of catch-up and comparison (tools/soak.py: the
broker and the daemon stopped, killed and restarted, upstream faults and throttling switched on
and off, the emulator clock moved, bad records and one record too large for Kafka planted).
It runs its own broker (it must stop and restart it), whatever KAFKA_BOOTSTRAP_SERVERS says.
`make soak` runs the long one; `python tools/soak.py --minutes 3 --seed 7` runs this one by hand,
with its evidence (daemon log, broker log, JSON report) kept under .run/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
