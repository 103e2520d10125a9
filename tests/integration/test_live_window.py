"""With a running clock, the fast scan looks back only to the oldest open session, and still
delivers every session shorter than the overlap, without any help from the reconcile sweep."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from pathlib import Path

from tests.integration.harness import (
    API_KEY,
    PARTNER_ID,
    Emulator,
    PollerRun,
    Topics,
    consume,
    kill,
    log_events,
    wait_until,
)


def checkable(emulator: Emulator, poller: PollerRun) -> set[int]:
    """Ended sessions that started five minutes (the overlap) after the first scan's window
    began: the fast scan alone must have delivered each of them."""
    starts = [
        datetime.fromisoformat(t["window_start"])
        for t in log_events(poller.log_text(), "tick", stream="completed")
        if t["window_start"]
    ]
    if not starts:
        return set()
    return {
        s["id"]
        for s in emulator.sessions("ended")
        if datetime.fromisoformat(s["startTime"].replace("Z", "+00:00"))
        >= min(starts) + timedelta(minutes=5)
    }


def test_narrow_windows_lose_nothing(tmp_path: Path, kafka_bootstrap: str) -> None:
    # 30 emulated seconds per real second; sessions of up to 4 emulated minutes.
    emulator = Emulator(
        tmp_path, "--partner", f"{PARTNER_ID}:{API_KEY}", "--seed", "11", "--clock-speed", "30",
        "--traffic-rate", "120", "--max-duration", "240", "--backlog-hours", "0",
    )  # fmt: skip
    try:
        poller = PollerRun(tmp_path, emulator.url, kafka_bootstrap, Topics.unique())
        poller.settings["completed"] = {
            "interval": "200ms",
            "overlap": "5m",
            "start_lookback": "1m",
        }
        poller.settings["started"] = {"interval": "200ms"}
        poller.settings["reconcile"] = {"enabled": False}
        # Progress is read from every tick's line: those that read nothing are at debug.
        poller.settings["log"] = {"level": "debug", "format": "json"}
        daemon = poller.start()
        try:
            # Enough scans, and enough sessions to check: how many end per scan depends on
            # how fast the machine runs the scans, so wait for both rather than a count.
            wait_until(
                lambda: (
                    len(log_events(poller.log_text(), "tick", stream="completed")) >= 40
                    and len(checkable(emulator, poller)) > 250
                ),
                90,
                "forty scans and 250 sessions ended",
                interval=0.5,
            )
            emulator.admin("POST", "/admin/clock", {"speed": 0})
            frozen = datetime.fromisoformat(
                emulator.admin("GET", "/admin/clock")["now"].replace("Z", "+00:00")
            )
            seen = len(poller.log_text())
            wait_until(
                lambda: any(
                    t["scanned_until"]
                    and datetime.fromisoformat(t["scanned_until"]) >= frozen.replace(microsecond=0)
                    for t in log_events(poller.log_text()[seen:], "tick", stream="completed")
                ),
                60,
                "a scan up to the frozen clock",
            )
        finally:
            assert kill(daemon, signal.SIGTERM) == 0
        ended = checkable(emulator, poller)
        assert len(ended) > 250
        got = {
            int(r.key)
            for r in consume(kafka_bootstrap, poller.topics.completed, expect=len(ended))
            if r.key
        }
        assert ended <= got, f"lost {len(ended - got)} sessions, e.g. {sorted(ended - got)[:5]}"
        ticks = log_events(poller.log_text(), "tick", stream="completed")
        narrowed = [
            t
            for t in ticks
            if t["window_start"]
            and datetime.fromisoformat(t["scanned_until"])
            - datetime.fromisoformat(t["window_start"])
            < timedelta(minutes=5)
        ]
        assert len(narrowed) > len(ticks) // 2, (
            "the open-session listing should narrow most windows"
        )
    finally:
        emulator.stop()
