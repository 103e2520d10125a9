"""The one retry policy, and secrets never reaching the log output."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from poller import logs
from poller.errors import RetriableUpstreamError
from poller.retry import retrying
from poller.settings import RetrySettings


async def run_until_success(
    failures: list[BaseException], settings: RetrySettings
) -> tuple[int, list[float]]:
    delays: list[float] = []
    attempts = 0
    async for attempt in retrying(
        settings, (RetriableUpstreamError,), lambda e, d, n: delays.append(d)
    ):
        with attempt:
            attempts += 1
            if failures:
                raise failures.pop(0)
    return attempts, delays


async def test_full_jitter_stays_under_the_exponential_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    settings = RetrySettings(initial_delay=0.5, max_delay=3.0, max_attempts=8)
    failures: list[BaseException] = [RetriableUpstreamError("fault", "x") for _ in range(6)]
    attempts, delays = await run_until_success(failures, settings)
    assert attempts == 7
    caps = [min(3.0, 0.5 * 2**n) for n in range(6)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))


async def test_retry_after_is_honoured_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    settings = RetrySettings(initial_delay=0.1, max_delay=1.0, max_retry_after=10.0, max_attempts=4)
    failures: list[BaseException] = [
        RetriableUpstreamError("throttled", "429", retry_after=7),
        RetriableUpstreamError("throttled", "503", retry_after=3600),
    ]
    _, delays = await run_until_success(failures, settings)
    assert delays == [7.0, 10.0]


async def test_gives_up_after_max_attempts_with_the_last_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    settings = RetrySettings(max_attempts=3)
    failures: list[BaseException] = [RetriableUpstreamError("fault", str(i)) for i in range(5)]
    with pytest.raises(RetriableUpstreamError, match="fault: 2"):
        await run_until_success(failures, settings)


async def test_other_errors_are_not_retried() -> None:
    with pytest.raises(KeyError):
        await run_until_success([KeyError("x")], RetrySettings())


async def _no_sleep(delay: float) -> None:
    return None


def test_secrets_are_redacted_everywhere_including_tracebacks() -> None:
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    logs.redactor.add(["api-key-123", "kafka-pass"])
    log = logs.get_logger("test")
    log.info("calling", body='{"apiKey": "api-key-123"}', nested={"p": ["kafka-pass"]})
    try:
        raise RuntimeError("failed with api-key-123")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("aiohttp.client").error("library says %s", "kafka-pass")
    text = out.getvalue()
    assert "api-key-123" not in text and "kafka-pass" not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines[0]["body"] == '{"apiKey": "[REDACTED]"}'
    assert "RuntimeError: failed with [REDACTED]" in lines[1]["exception"]
    assert lines[2]["event"] == "library says [REDACTED]"


def test_values_too_short_to_be_credentials_are_left_alone() -> None:
    redactor = logs.SecretRedactor(["k", "abc", "long-enough-secret"])
    assert redactor.scrub("locked by another process: long-enough-secret") == (
        "locked by another process: [REDACTED]"
    )
