"""The command line: arguments, and a real server process started and stopped."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import pytest
import trustme
from emulator_testkit import SERVICE, T0

from poller.emulator.__main__ import main as emulator_main
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


def test_tls_cert_and_key_go_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("poller.emulator.cli._configure_logging", lambda level: None)
    pem = tmp_path / "any.pem"
    for argv in (["--tls-cert", str(pem)], ["--tls-key", str(pem)]):
        with pytest.raises(SystemExit) as exited:
            emulator_main(argv)
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("usage: python -m poller.emulator")
        assert "--tls-cert and --tls-key go together" in error
    assert parse().tls_cert is None and parse().tls_key is None


def test_an_unusable_certificate_exits_with_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("poller.emulator.cli._configure_logging", lambda level: None)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, other_key = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.issue_cert("localhost").private_key_pem.write_to_path(other_key)
    assert run(parse("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key))) == 2
    assert run(parse("--tls-cert", str(cert), "--tls-key", str(other_key))) == 2  # not its key


async def test_the_server_process_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    with chain.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    server.private_key_pem.write_to_path(key)
    port_file = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller.emulator",
        "--port", "0",
        "--port-file", str(port_file),
        "--tls-cert", str(chain),
        "--tls-key", str(key),
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
        port = port_file.read_text().strip()
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/admin/health", ssl=trusting) as answer:
                assert await answer.json() == {"ok": True}
            # The certificate is the one given: a client without the CA refuses it.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"https://127.0.0.1:{port}/admin/health"):
                    pass
            # And nothing answers in plain HTTP on that port.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/admin/health") as answer:
                    await answer.read()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert f"listening on https://127.0.0.1:{port}" in log
    assert "GET /admin/health 200" in log
    assert not port_file.exists()
