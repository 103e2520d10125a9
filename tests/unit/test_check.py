"""`glance-poller check`: the table, the verdict, and what happens before anything connects."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from poller.check import FAILED, OK, SKIPPED, Row, add_arguments, check, format_table, verdict


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_columns_are_aligned_and_details_kept_on_one_line() -> None:
    rows = [
        Row("config", OK, "poller.toml: 1 partner(s)"),
        Row("kafka broker-1:9092,broker-2:9092", FAILED, "cannot\nconnect:   refused"),
        Row("topic glance.dlq (dlq)", SKIPPED, "kafka not reachable"),
    ]

    lines = format_table(rows).splitlines()

    assert lines[0].split() == ["check", "result", "detail"]
    assert set(lines[1]) == {"-", " "}
    result_column = lines[1].index(" -") + 1
    detail_column = lines[1].index(" -", result_column) + 1
    for line, row in zip(lines[2:], rows, strict=True):
        assert line[:result_column].rstrip() == row.check
        assert line[result_column:detail_column].rstrip() == row.result
    assert lines[3][detail_column:] == "cannot connect: refused"
    assert all(line == line.rstrip() for line in lines)


def test_verdict_counts_failures_and_skips() -> None:
    assert verdict([Row("a", OK), Row("b", "created")]) == "all checks passed"
    assert verdict([Row("a", FAILED), Row("b", OK)]) == "1 check(s) failed"
    assert verdict([Row("a", FAILED), Row("b", SKIPPED), Row("c", FAILED)]) == (
        "2 check(s) failed (1 skipped)"
    )


async def test_an_invalid_config_is_one_failed_row_per_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GLANCE_PARTNER_ID", "GLANCE_API_KEY", "GLANCE_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "bad.toml"
    config.write_text('[glance]\nbase_url = "nope"\n[mystery]\nx = 1\n')
    out = io.StringIO()

    code = await check(parser().parse_args([]), config, out)

    assert code == 1
    text = out.getvalue()
    body = text.splitlines()[2:-2]
    assert len(body) == 2
    assert all(line.startswith("config") and " FAILED " in line for line in body)
    assert "glance.base_url: " in text and "mystery: " in text
    assert text.splitlines()[-1] == "2 check(s) failed"


def test_options_and_their_defaults() -> None:
    args = parser().parse_args([])
    assert (args.create_topics, args.partitions, args.replication_factor, args.timeout) == (
        False,
        3,
        1,
        10.0,
    )
    args = parser().parse_args(["--create-topics", "--partitions", "6", "--timeout", "2.5"])
    assert (args.create_topics, args.partitions, args.timeout) == (True, 6, 2.5)


@pytest.mark.parametrize(
    "argv",
    [["--partitions", "0"], ["--replication-factor", "x"], ["--timeout", "0"]],
)
def test_bad_option_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
