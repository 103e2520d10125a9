"""HTTPS upstream end to end: the emulator behind a certificate from a private CA (trustme),
the daemon with its three TLS settings, real Kafka."""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from tests.integration.harness import (
    API_KEY,
    FROZEN_EMULATOR,
    PARTNER_ID,
    Emulator,
    PollerRun,
    Topics,
    consume,
    log_events,
)

SESSIONS = 6


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_chain: Path
    server_key: Path


class HttpsEmulator(Emulator):
    """The harness's emulator, served over HTTPS; its admin calls trust the private CA."""

    def __init__(self, workdir: Path, pki: Pki, *args: str) -> None:
        super().__init__(
            workdir, "--tls-cert", str(pki.server_chain), "--tls-key", str(pki.server_key), *args
        )
        assert self.url.startswith("http://")
        self.url = "https://" + self.url.removeprefix("http://")
        self._tls = ssl.create_default_context(cafile=str(pki.ca_cert))

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30, context=self._tls) as response:
            return orjson.loads(response.read())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(tmp_path / "ca.pem", tmp_path / "server-chain.pem", tmp_path / "server-key.pem")
    ca.cert_pem.write_to_path(pki.ca_cert)
    with pki.server_chain.open("wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    server.private_key_pem.write_to_path(pki.server_key)
    return pki


@pytest.fixture
def https_emulator(tmp_path: Path, pki: Pki) -> Iterator[HttpsEmulator]:
    emu = HttpsEmulator(
        tmp_path,
        pki,
        *FROZEN_EMULATOR,
    )
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def poller(tmp_path: Path, https_emulator: HttpsEmulator, kafka_bootstrap: str) -> PollerRun:
    assert https_emulator.url.startswith("https://127.0.0.1:")
    return PollerRun(tmp_path, https_emulator.url, kafka_bootstrap, Topics.unique())


def ended_sessions(emulator: Emulator) -> set[int]:
    """A few sessions that ended within the daemon's first look-back (2h before 12:00)."""
    created = emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": SESSIONS,
            "from": "2026-03-10T10:30:00Z",
            "until": "2026-03-10T11:30:00Z",
            "maxDuration": 600,
            "seed": 3,
        },
    )
    assert created["created"] == SESSIONS
    upstream = {s["id"] for s in emulator.sessions("ended")}
    assert len(upstream) == SESSIONS
    return upstream


def published_ids(poller: PollerRun, expect: int | None) -> list[int]:
    records = consume(poller.bootstrap, poller.topics.completed, expect=expect, idle=1.0)
    return [int(r.key) for r in records if r.key is not None]


def test_an_untrusted_certificate_is_refused_by_default(
    https_emulator: HttpsEmulator, poller: PollerRun
) -> None:
    ended_sessions(https_emulator)
    result = poller.once()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert API_KEY not in output
    assert "TLS certificate verification is OFF" not in output
    failed = log_events(output, "tick failed; will retry next tick", stream="completed")
    assert len(failed) == 1, output
    error = failed[0]["error"]
    assert "tls" in error.lower() and "certificate" in error.lower(), error
    assert "CERTIFICATE_VERIFY_FAILED" in error, error
    # The completed stream never got a page (reconcile, with nothing to sweep yet, may tick).
    assert log_events(output, "tick", stream="completed") == [], output
    assert published_ids(poller, expect=None) == []


def test_a_private_ca_file_verifies_the_certificate(
    https_emulator: HttpsEmulator, poller: PollerRun, pki: Pki
) -> None:
    upstream = ended_sessions(https_emulator)
    poller.settings["glance"] = {"ca_file": str(pki.ca_cert)}
    result = poller.once()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "TLS certificate verification is OFF" not in output
    assert "tick failed" not in output, output
    ids = published_ids(poller, expect=len(upstream))
    assert sorted(ids) == sorted(upstream)


def test_verification_off_works_and_says_so_once(
    https_emulator: HttpsEmulator, poller: PollerRun
) -> None:
    upstream = ended_sessions(https_emulator)
    poller.settings["glance"] = {"verify_tls": False}
    result = poller.once()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [
        line for line in output.splitlines() if "TLS certificate verification is OFF" in line
    ]
    assert len(warnings) == 1, output
    assert '"level":"warning"' in warnings[0], warnings[0]
    assert API_KEY not in output
    ids = published_ids(poller, expect=len(upstream))
    assert sorted(ids) == sorted(upstream)
