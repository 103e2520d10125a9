"""`glance-poller check`: the table, the verdict, and what happens before anything connects."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

import poller.check
from poller.check import (
    FAILED,
    OK,
    SKIPPED,
    WARNING,
    Row,
    add_arguments,
    check,
    check_offline,
    default_replication,
    format_table,
    missing_topic_result,
    report,
    verdict,
)


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
    # Every problem, the missing partner too (one bad value hides no other).
    assert len(body) == 3
    assert all(line.startswith("config") and " FAILED " in line for line in body)
    assert "glance.base_url: " in text and "mystery: " in text and "partners: " in text
    assert text.splitlines()[-1] == "3 check(s) failed"


def test_options_and_their_defaults() -> None:
    args = parser().parse_args([])
    assert (args.create_topics, args.partitions, args.replication_factor, args.timeout) == (
        False,
        3,
        None,  # min(3, number of brokers), decided once the brokers are known
        10.0,
    )
    assert args.offline is False
    args = parser().parse_args(["--create-topics", "--partitions", "6", "--timeout", "2.5"])
    assert (args.create_topics, args.partitions, args.timeout) == (True, 6, 2.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--partitions", "0"],
        ["--replication-factor", "x"],
        ["--timeout", "0"],
        ["--offline", "--create-topics"],  # offline contacts nothing, so creates nothing
    ],
)
def test_bad_option_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)


def test_replication_factor_defaults_to_three_or_the_number_of_brokers() -> None:
    assert [default_replication(None, brokers) for brokers in (1, 2, 3, 4, 9)] == [1, 2, 3, 3, 3]
    assert default_replication(2, 9) == 2
    assert default_replication(5, 1) == 5  # as asked: the broker says no, in the table


def test_warnings_do_not_fail_the_verdict() -> None:
    rows = [Row("config", OK), Row("topic t (dlq)", WARNING, "missing"), Row("k", SKIPPED)]
    out = io.StringIO()

    assert report(rows, out) == 0
    assert out.getvalue().splitlines()[-1] == "all checks passed (1 warning(s), 1 skipped)"
    assert verdict([Row("a", FAILED), Row("b", WARNING)]) == "1 check(s) failed (1 warning(s))"


AUTO_ON = {"auto.create.topics.enable": "true", "num.partitions": "1"}
AUTO_ON |= {"default.replication.factor": "1"}


def test_a_missing_topic_is_a_warning_only_when_every_broker_auto_creates() -> None:
    result, detail = missing_topic_result({1: AUTO_ON, 2: AUTO_ON})
    assert result == WARNING
    assert "auto.create.topics.enable=true" in detail and "1 partition(s)" in detail

    off = AUTO_ON | {"auto.create.topics.enable": "false"}
    result, detail = missing_topic_result({1: AUTO_ON, 2: off})
    assert result == FAILED
    assert "[2]" in detail and "--create-topics" in detail

    result, detail = missing_topic_result({1: AUTO_ON, 2: "ClusterAuthorizationFailedError"})
    assert result == FAILED
    assert "broker 2: ClusterAuthorizationFailedError" in detail
    assert missing_topic_result({})[0] == FAILED


class _Response:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj

    def to_object(self) -> dict[str, Any]:
        return self._obj


class FakeAdmin:
    """Stands in for AIOKafkaAdminClient: a cluster of ``brokers`` brokers and no topics."""

    brokers = 5
    auto_create = "true"
    created: list[Any] = []

    def __init__(self, **options: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": n} for n in range(1, self.brokers + 1)]}

    async def describe_topics(self) -> list[dict[str, Any]]:
        return []

    async def describe_configs(self, resources: list[Any]) -> list[_Response]:
        entries = [
            {"config_names": "auto.create.topics.enable", "config_value": self.auto_create},
            {"config_names": "num.partitions", "config_value": "6"},
            {"config_names": "default.replication.factor", "config_value": "3"},
        ]
        return [
            _Response(
                {
                    "resources": [
                        {"error_code": 0, "resource_name": r.name, "config_entries": entries}
                        for r in resources
                    ]
                }
            )
        ]

    async def create_topics(self, new: list[Any], timeout_ms: int) -> Any:
        FakeAdmin.created += new
        return argparse.Namespace(topic_errors=[(t.name, 0, None) for t in new])


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("GLANCE_PARTNER_ID", "GLANCE_API_KEY", "GLANCE_API_KEY_FILE", "GLANCE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("UNIT_KEY", "unit-test-api-key")
    path = tmp_path / "poller.toml"
    path.write_text(
        '[glance]\nbase_url = "http://127.0.0.1:9"\n'  # refused at once
        '[kafka]\nbootstrap_servers = "broker-1:9092"\n'
        '[[partners]]\nid = 12345\napi_key_env = "UNIT_KEY"\n'
    )
    return path


def topic_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("topic ")]


@pytest.mark.parametrize(("brokers", "expected"), [(5, 3), (2, 2)])
async def test_created_topics_get_min_three_brokers_replicas(
    config: Path, monkeypatch: pytest.MonkeyPatch, brokers: int, expected: int
) -> None:
    monkeypatch.setattr(poller.check, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(FakeAdmin, "brokers", brokers)
    monkeypatch.setattr(FakeAdmin, "created", [])
    out = io.StringIO()

    await check(parser().parse_args(["--create-topics"]), config, out)

    assert len(FakeAdmin.created) == 4
    assert {(t.num_partitions, t.replication_factor) for t in FakeAdmin.created} == {(3, expected)}
    lines = topic_lines(out.getvalue())
    assert len(lines) == 4
    assert all(f" created  3 partition(s), replication factor {expected}" in x for x in lines)


@pytest.mark.parametrize(
    ("auto_create", "outcome", "failed"), [("true", WARNING, 1), ("false", FAILED, 5)]
)
async def test_missing_topics_follow_the_brokers_auto_creation(
    config: Path, monkeypatch: pytest.MonkeyPatch, auto_create: str, outcome: str, failed: int
) -> None:
    monkeypatch.setattr(poller.check, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(FakeAdmin, "auto_create", auto_create)
    monkeypatch.setattr(FakeAdmin, "created", [])
    out = io.StringIO()

    await check(parser().parse_args([]), config, out)

    lines = topic_lines(out.getvalue())
    assert len(lines) == 4
    assert all(line.split()[3] == outcome for line in lines), out.getvalue()
    assert all("--create-topics" in line for line in lines)
    # The partner's check fails too here (nothing listens at its base_url).
    assert out.getvalue().splitlines()[-1].startswith(f"{failed} check(s) failed")
    assert FakeAdmin.created == []


def test_offline_accepts_a_valid_configuration(config: Path) -> None:
    out = io.StringIO()

    assert check_offline(config, out) == 0

    text = out.getvalue()
    assert [line.split()[:2] for line in text.splitlines()[2:4]] == [
        ["config", "ok"],
        ["partner", "12345"],
    ]
    assert "offline: not contacted" in text
    assert text.splitlines()[-1] == "all checks passed (2 skipped)"


def test_offline_lists_every_problem_by_key_and_exits_2(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNIT_KEY")
    config.write_text(config.read_text() + '[completed]\ninterval = "soon"\n[mystery]\nx = 1\n')
    out = io.StringIO()

    assert check_offline(config, out) == 2

    text = out.getvalue()
    assert "completed.interval: " in text
    assert "mystery: " in text
    assert "partners[0].api_key_env: " in text
    assert text.splitlines()[-1] == "3 check(s) failed"
