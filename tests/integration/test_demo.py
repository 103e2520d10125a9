"""`make run`'s orchestrator: broker, emulator with live traffic, daemon, and the feed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_prints_events_and_stops_everything_it_started() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_demo.py"), "--max-events", "3"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [
        line
        for line in result.stdout.splitlines()
        if re.search(r" completed +partner=12345 session=\d+ ", line)
    ]
    assert len(events) == 3, result.stdout
    assert result.stdout.rstrip().endswith("stopping ...")
    broker = re.search(r"broker (127\.0\.0\.1:\d+)", result.stdout)
    assert broker is not None
    probe = subprocess.run(
        ["bash", "-c", f"exec 3<>/dev/tcp/{broker.group(1).replace(':', '/')}"],
        capture_output=True,
        check=False,
    )
    assert probe.returncode != 0, "the broker is still listening after the demo stopped"
