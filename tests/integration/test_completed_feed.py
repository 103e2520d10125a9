"""The completed feed end to end: emulator over HTTP -> daemon -> real Kafka -> consumer."""

from __future__ import annotations

import copy
import resource
import signal
import subprocess
import threading
from collections import Counter
from typing import Any

import orjson

from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    Emulator,
    PollerRun,
    consume,
    http_get,
    kill,
    log_events,
    metric,
    operator_port,
    wait_until,
)
from tests.integration.test_kafka_outage import assert_one_ce_id_each

CE_HEADERS = {
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "content-type",
}


def expected_value(listing: dict[str, Any]) -> dict[str, Any]:
    """What the contract says the event value is, derived from the emulator's own listing."""
    session = {k: v for k, v in copy.deepcopy(listing["record"]).items() if k != "__type"}
    session["endTime"] = listing["endTime"]
    return {
        "partnerId": listing["partnerId"],
        "userName": listing["userName"],
        "partnerUserId": listing["partnerUserId"],
        "session": session,
    }


def test_a_session_the_emulator_ends_arrives_once(
    emulator: Emulator, poller: PollerRun, completed_schema: Any
) -> None:
    emulator.advance(60)  # 12:01:00
    created = emulator.admin(
        "POST",
        "/admin/sessions",
        {
            "partnerId": PARTNER_ID,
            "sessions": [
                {
                    "startTime": "2026-03-10T12:00:40Z",
                    "endTime": None,
                    "status": "X",
                    "userName": "agent.one.glance.net",
                    "partnerUserId": "puid-1",
                }
            ],
        },
    )
    (session_id,) = created["ids"]
    first = poller.once()
    assert first.returncode == 0, first.stdout + first.stderr
    assert consume(poller.bootstrap, poller.topics.completed, idle=1.0) == [], (
        "an open session was published"
    )

    emulator.admin("POST", f"/admin/sessions/{session_id}/end", {"status": "X"})
    emulator.advance(30)
    for _ in range(2):  # the second run re-reads the overlap and must not re-emit
        result = poller.once()
        assert result.returncode == 0, result.stdout + result.stderr

    records = consume(poller.bootstrap, poller.topics.completed, expect=1)
    assert len(records) == 1
    (record,) = records
    (listing,) = [s for s in emulator.sessions() if s["id"] == session_id]
    assert listing["record"]["status"] == "X" and listing["record"]["duration"] == 20
    assert record.key == str(session_id)
    assert set(record.headers) == CE_HEADERS
    assert record.headers["ce_specversion"] == "1.0"
    assert record.headers["ce_type"] == "net.glance.session.completed"
    assert record.headers["ce_source"] == f"/glance/partners/{PARTNER_ID}"
    assert record.headers["ce_subject"] == str(session_id)
    assert record.headers["ce_time"] == "2026-03-10T12:01:00Z"
    assert record.headers["content-type"] == "application/json"
    completed_schema.validate(record.value)
    assert record.value == expected_value(listing)
    assert record.value["session"]["endTime"] == "2026-03-10T12:01:00Z"


def test_the_seed_sample_comes_out_field_for_field(
    emulator: Emulator, poller: PollerRun, seed_sample: dict[str, Any], completed_schema: Any
) -> None:
    emulator.admin("POST", "/admin/clock", {"set": "2020-02-14T00:00:00Z"})
    assert (
        emulator.admin("POST", f"/admin/dataset?partnerId={PARTNER_ID}", seed_sample)["loaded"] == 2
    )
    poller.settings["completed"] = {"start_lookback": "3d"}
    result = poller.once()
    assert result.returncode == 0, result.stdout + result.stderr

    records = consume(poller.bootstrap, poller.topics.completed, expect=2)
    by_key = {r.key: r for r in records}
    assert len(records) == 2 and set(by_key) == {"56960588", "57125147"}
    # Built from the vendor document alone: drop __type, add endTime (start + duration).
    users = seed_sample["d"]["users"]
    end_times = {56960588: "2020-02-12T11:41:25Z", 57125147: "2020-02-13T18:34:27Z"}
    for user in users:
        for session in user["sessions"]:
            expected_session = {k: v for k, v in session.items() if k != "__type"}
            expected_session["endTime"] = end_times[session["id"]]
            record = by_key[str(session["id"])]
            completed_schema.validate(record.value)
            assert record.value == {
                "partnerId": PARTNER_ID,
                "userName": user["userName"],
                "partnerUserId": user["partnerUserId"],
                "session": expected_session,
            }
            assert record.headers["ce_time"] == end_times[session["id"]]


def test_five_thousand_sessions_over_many_pages_and_users(
    emulator: Emulator, poller: PollerRun, completed_schema: Any
) -> None:
    created = emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 5000,
            "from": "2026-03-10T06:00:00Z",
            "until": "2026-03-10T11:00:00Z",
            "maxDuration": 3000,
            "users": 7,
            "seed": 11,
        },
    )
    assert created["created"] == 5000
    upstream = {s["id"]: s for s in emulator.sessions("ended")}
    assert len(upstream) == 5000
    poller.settings["glance"] = {"page_size": 250}
    poller.settings["completed"] = {"start_lookback": "7h"}
    result = poller.once(timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    records = consume(poller.bootstrap, poller.topics.completed, expect=5000)
    ids = Counter(int(r.key) for r in records if r.key is not None)
    assert len(records) == 5000
    assert set(ids) == set(upstream)
    assert max(ids.values()) == 1
    assert len({r.value["userName"] for r in records}) == 7
    for record in records:
        assert record.value == expected_value(upstream[int(record.key)])
        completed_schema.validate(record.value)
    summary = [
        line
        for line in result.stdout.splitlines()
        if '"event":"tick"' in line and '"stream":"completed"' in line
    ]
    assert len(summary) == 1 and '"pages":20' in summary[0] and '"emitted":5000' in summary[0]


def test_sigkill_mid_scan_loses_nothing(emulator: Emulator, poller: PollerRun) -> None:
    page_size = 100
    emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": 3000,
            "from": "2026-03-10T08:00:00Z",
            "until": "2026-03-10T11:00:00Z",
            "maxDuration": 1800,
            "seed": 5,
        },
    )
    upstream = sorted(s["id"] for s in emulator.sessions("ended"))
    emulator.admin(
        "POST",
        "/admin/faults",
        {
            "calls": [
                {
                    "kind": "slow",
                    "operation": "PartnerCompletedSessions",
                    "count": 1000,
                    "delay": 0.6,
                }
            ]
        },
    )
    poller.settings["glance"] = {"page_size": page_size}
    poller.settings["completed"] = {"start_lookback": "5h", "interval": "1h"}
    daemon = poller.start()
    wait_until(
        lambda: (
            len(consume(poller.bootstrap, poller.topics.completed, idle=0.3, timeout=10)) >= 1000
        ),
        timeout=120,
        what="a third of the sessions to arrive",
        interval=0.2,
    )
    assert kill(daemon, signal.SIGKILL) == -signal.SIGKILL
    before = len(consume(poller.bootstrap, poller.topics.completed, idle=0.5))
    assert before < len(upstream), "the scan finished before the kill; the test proves nothing"

    emulator.admin("DELETE", "/admin/faults")
    result = poller.once()
    assert result.returncode == 0, result.stdout + result.stderr

    records = consume(poller.bootstrap, poller.topics.completed, expect=len(upstream))
    counts = Counter(int(r.key) for r in records if r.key is not None)
    assert sorted(counts) == upstream, "a session was lost"
    duplicated = {i for i, n in counts.items() if n > 1}
    # Duplicates come only from the one page that was sent but not yet committed...
    pages = [set(upstream[i : i + page_size]) for i in range(0, len(upstream), page_size)]
    assert any(duplicated <= page for page in pages), (
        f"duplicates span pages: {sorted(duplicated)[:10]}"
    )
    assert all(n <= 2 for n in counts.values())
    # ...and carry the same event id.
    ce_ids: dict[int, set[str]] = {}
    for r in records:
        ce_ids.setdefault(int(r.key), set()).add(r.headers["ce_id"])
    assert all(len(v) == 1 for v in ce_ids.values())


def test_wrong_api_key_exits_3_with_one_line_and_no_retries(
    emulator: Emulator, poller: PollerRun
) -> None:
    poller.api_key = "WRONG-key-7d1e0a"
    emulator.admin("POST", "/admin/stats/reset")
    result = poller.once()
    assert result.returncode == 3
    output = result.stdout + result.stderr
    assert "WRONG-key-7d1e0a" not in output
    errors = [line for line in output.splitlines() if '"level":"error"' in line]
    assert len(errors) == 1, output
    assert f"partner {PARTNER_ID}" in errors[0] and "rejected the credentials" in errors[0]
    assert "Traceback" not in output
    calls = emulator.stats()
    assert sum(op["total"] for op in calls.values()) == 1, calls


def test_a_daemon_whose_only_key_is_rejected_exits_3_and_closes_what_it_opened(
    emulator: Emulator, poller: PollerRun
) -> None:
    poller.api_key = "WRONG-key-5c2f91"
    process = poller.start()
    assert process.wait(60) == 3
    output = poller.log_text()
    assert "WRONG-key-5c2f91" not in output
    errors = [line for line in output.splitlines() if '"level":"error"' in line]
    assert len(errors) == 1, output
    assert "rejected the credentials" in errors[0]
    assert "Unclosed" not in output and "Traceback" not in output, output


def test_a_key_rejected_while_the_streams_are_failing_ends_them_without_a_recovery(
    emulator: Emulator, poller: PollerRun
) -> None:
    """The first stream to meet the rejection halts the partner; the others, waiting out a
    retry at that moment, end without claiming a tick that worked (they used to log
    "recovered" and a tick line in the same millisecond as the rejection)."""
    every_call_fails = {"p": 1.0, "kinds": ["error500"], "seed": 2}
    emulator.admin("POST", "/admin/faults", {"rate": every_call_fails})
    poller.settings["completed"] = {"interval": "300ms"}
    poller.settings["started"] = {"interval": "300ms"}
    poller.settings["retry"] = {"initial_delay": "50ms", "max_delay": "300ms", "max_attempts": 4}
    process = poller.start()
    try:
        wait_until(
            lambda: (
                {
                    line["stream"]
                    for line in log_events(poller.log_text(), "tick failed; will retry next tick")
                }
                >= {"completed", "started"}
            ),
            60,
            "both streams failing",
        )
        emulator.admin("POST", "/admin/partners", {"partnerId": PARTNER_ID, "apiKey": "new-key"})
        emulator.admin("DELETE", "/admin/faults")
        assert process.wait(60) == 3
    finally:
        kill(process, signal.SIGTERM)
    output = poller.log_text()
    rejected = output.index("rejected the credentials")
    after = output[rejected:]
    assert '"event":"recovered"' not in after, after
    assert log_events(after, "tick") == [], after


def test_a_state_file_removed_under_the_daemon_stops_it_with_exit_4(
    emulator: Emulator, poller: PollerRun
) -> None:
    """Its commits went on into the unlinked file, ready and silent, and a second daemon then
    ran on the same path (found by an adversary helper)."""
    poller.settings["completed"] = {"interval": "300ms"}
    process = poller.start()
    try:
        wait_until(lambda: poller.state_path.exists(), 60, "the state file")
        wait_until(lambda: '"event":"tick"' in poller.log_text(), 60, "a first tick")
        for leftover in poller.state_path.parent.glob(poller.state_path.name + "*"):
            leftover.unlink()
        assert process.wait(60) == 4
    finally:
        kill(process, signal.SIGTERM)
    output = poller.log_text()
    assert f"state file {poller.state_path} was removed while the daemon ran" in output, output
    assert "Traceback" not in output


def test_a_second_daemon_on_the_same_state_exits_4(emulator: Emulator, poller: PollerRun) -> None:
    poller.settings["completed"] = {"interval": "1h"}
    first = poller.start()
    try:
        wait_until(
            lambda: '"event":"tick"' in poller.log_text(), 60, "the first daemon's first tick"
        )
        second = poller.once()
        assert second.returncode == 4
        output = second.stdout + second.stderr
        assert (
            str(poller.state_path) in output and "locked by another glance-poller process" in output
        )
        assert first.poll() is None, "the first daemon must keep running"
    finally:
        code = kill(first, signal.SIGTERM)
    assert code == 0
    assert '"event":"glance-poller stopped"' in poller.log_text()


def start_logging_through_a_pipe(poller: PollerRun) -> subprocess.Popen[bytes]:
    """The daemon with its log on a pipe, copied to ``poller.log`` by this process: a file-size
    limit set on the daemon then falls on its own files (the state) and not on its log."""
    process = subprocess.Popen(
        [PYTHON, "-m", "poller", "run", "--config", str(poller.config_file())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=poller.environment(),
    )

    def copy_log() -> None:
        assert process.stdout is not None
        with (poller.workdir / "poller.log").open("ab", buffering=0) as log:
            for line in process.stdout:
                log.write(line)

    threading.Thread(target=copy_log, daemon=True).start()
    return process


def test_a_state_file_that_cannot_be_written_is_said_once_and_loses_nothing(
    emulator: Emulator, poller: PollerRun
) -> None:
    """A full disk (here: a file-size limit set on the running daemon, so that every write of
    the state fails) is weather, not a bug: one warning per stream naming the state file,
    no traceback at every tick, /readyz false; once the disk has room the feed goes on and every
    session arrives (it used to log a traceback each tick: found by an adversary helper)."""

    def add_sessions(since: str, until: str, seed: int) -> None:
        emulator.admin(
            "POST",
            "/admin/traffic",
            {
                "partnerId": PARTNER_ID,
                "count": 60,
                "from": since,
                "until": until,
                "maxDuration": 120,
                "seed": seed,
            },
        )

    add_sessions("2026-03-10T11:00:00Z", "2026-03-10T11:50:00Z", 41)
    poller.settings["completed"] = {"interval": "300ms"}
    poller.settings["started"] = {"interval": "300ms"}
    process = start_logging_through_a_pipe(poller)
    try:
        wait_until(lambda: operator_port(poller.log_text()) is not None, 30, "the operator port")
        port = operator_port(poller.log_text())
        assert port is not None
        wait_until(
            lambda: len(consume(poller.bootstrap, poller.topics.completed, idle=0.3)) >= 60,
            60,
            "the first sessions",
        )
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        emulator.advance(600)
        add_sessions("2026-03-10T12:00:00Z", "2026-03-10T12:07:00Z", 42)
        unwritable = f"state: state file {poller.state_path} cannot be written ("

        def problems() -> list[str]:
            return list(orjson.loads(http_get(port, "/readyz")[1])["problems"])

        wait_until(
            lambda: any(p.startswith(unwritable) for p in problems()), 60, "readiness to say why"
        )
        wait_until(
            lambda: (
                metric(
                    http_get(port, "/metrics")[1].decode(),
                    "glance_poller_ticks_total",
                    stream="completed",
                    result="failed",
                )
                >= 5
            ),
            60,
            "five failed ticks",
        )
        resource.prlimit(
            process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "ready again")
        assert problems() == []
        upstream = {str(s["id"]) for s in emulator.sessions("ended")}
        records = consume(poller.bootstrap, poller.topics.completed, expect=len(upstream))
        assert {r.key for r in records} == upstream
        assert_one_ce_id_each(records)
        assert kill(process, signal.SIGTERM) == 0
    finally:
        kill(process)
    output = poller.log_text()
    assert "Traceback" not in output and "tick crashed" not in output, output
    failures = log_events(output, "tick failed; will retry next tick")
    assert {f["stream"] for f in failures} <= {"completed", "started", "reconcile"}, failures
    assert len(failures) == len({f["stream"] for f in failures}), "said more than once"
    assert all(f"state file {poller.state_path}" in f["error"] for f in failures), failures
    assert log_events(output, "recovered", stream="completed"), output
