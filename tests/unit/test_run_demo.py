"""`make run`'s screen (tools/run_demo.py): what runs where, a legend, colour only on a terminal."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "tools" / "run_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_demo"] = module
    spec.loader.exec_module(module)
    return module


demo = _load()

LINE = (
    "2026-12-01T21:46:24Z completed partner=12345 session=60000003 type=G status=X "
    "duration=2738s guests=4 user=agent.company.glance.net"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "env", "expected"),
    [
        (_Terminal(), {}, True),
        (_Terminal(), {"NO_COLOR": "1"}, False),
        (_Terminal(), {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value counts
        (_Terminal(), {"TERM": "dumb"}, False),
        (io.StringIO(), {}, False),  # piped or redirected
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    stream: io.StringIO, env: dict[str, str], expected: bool
) -> None:
    assert demo.colour_enabled(stream, env) is expected


def _header(colour: bool) -> list[str]:
    return list(
        demo.header(
            demo.Screen(io.StringIO(), colour),
            broker="127.0.0.1:39001",
            broker_data=Path("/tmp/glance-kafka-x"),
            emulator="http://127.0.0.1:39002",
            metrics_port=39003,
            state=ROOT / ".run" / "state.sqlite3",
            traffic_rate=30.0,
        )
    )


def test_the_header_says_what_runs_where_and_how_to_stop_it() -> None:
    text = "\n".join(_header(colour=False))

    assert not ANSI.search(text)
    for expected in (
        "127.0.0.1:39001",
        "http://127.0.0.1:39002",
        "http://127.0.0.1:39003/metrics",
        "/healthz",
        "/readyz",
        "state.sqlite3",
        "poller.log",
        "emulator.log",
        "Ctrl-C",
        "close this terminal",
    ):
        assert expected in text, expected
    assert len(text.splitlines()) <= 8  # short


def test_the_legend_names_every_column_and_letter_of_the_event_lines() -> None:
    text = "\n".join(demo.legend(demo.Screen(io.StringIO(), False)))

    fields = [word.split("=")[0] for word in LINE.split() if "=" in word]
    assert fields == ["partner", "session", "type", "status", "duration", "guests", "user"]
    for field in fields:
        assert f"{field}=" in text, field
    # The session types and every terminal status letter of the API (a completed event's).
    for letter in ("C", "G", "V", "C", "X", "Q", "T", "D", "E", "K", "U"):
        assert re.search(rf"\b{letter} [a-z]", text), letter
    assert "DEAD LETTER" in text


def test_colour_marks_the_status_and_is_absent_without_it() -> None:
    plain = demo.Screen(io.StringIO(), False)
    coloured = demo.Screen(io.StringIO(), True)

    assert plain.event(LINE) == LINE
    painted = coloured.event(LINE)
    assert painted != LINE
    assert ANSI.sub("", painted) == LINE
    assert "status=\x1b[" in painted
    assert ANSI.sub("", "\n".join(_header(colour=True))) == "\n".join(_header(colour=False))


def test_a_screen_whose_terminal_is_gone_drops_output_quietly() -> None:
    class _HungUp(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    screen = demo.Screen(_HungUp(), True)

    screen.say("stopping ...")  # no exception: the demo must still stop its children
    screen.say("stopped")
    assert screen.gone
