"""The one retry policy, and secrets never reaching the log output."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import orjson
import pytest
import structlog

from poller import logs
from poller.errors import RetriableUpstreamError
from poller.metrics import REGISTRY
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


async def test_each_retry_is_told_the_error_it_follows_and_its_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the upstream client counts and logs per retry: the reason of the error just raised.
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    failures = [RetriableUpstreamError("throttled", "429"), RetriableUpstreamError("timeout", "t")]
    told: list[tuple[BaseException, int]] = []
    async for attempt in retrying(
        RetrySettings(max_attempts=5),
        (RetriableUpstreamError,),
        lambda e, d, n: told.append((e, n)),
    ):
        with attempt:
            if failures:
                raise failures.pop(0)
    assert [(getattr(e, "reason", None), n) for e, n in told] == [("throttled", 1), ("timeout", 2)]


async def test_until_mode_does_not_retry_other_errors() -> None:
    # Acknowledgements are retried until the stop, but a bug is not weather: it surfaces at once.
    stop = asyncio.Event()
    attempts = 0
    settings = RetrySettings(initial_delay=0.001, max_delay=0.002)
    with pytest.raises(KeyError):
        async for attempt in retrying(settings, (RetriableUpstreamError,), until=stop):
            with attempt:
                attempts += 1
                if attempts == 3:
                    stop.set()  # a retried bug would end here, after two retries
                raise KeyError("x")
    assert attempts == 1


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


async def test_a_retry_after_of_zero_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("asyncio.sleep", _no_sleep)
    settings = RetrySettings(initial_delay=5.0, max_delay=30.0, max_attempts=3)
    failures: list[BaseException] = [RetriableUpstreamError("throttled", "429", retry_after=0)]
    _, delays = await run_until_success(failures, settings)
    assert delays == [0.0]


async def test_until_mode_retries_past_max_attempts_with_backoff_and_stops_on_the_event() -> None:
    stop = asyncio.Event()
    settings = RetrySettings(initial_delay=0.001, max_delay=0.002, max_attempts=2)
    delays: list[float] = []
    attempts = 0
    with pytest.raises(RetriableUpstreamError):
        async for attempt in retrying(
            settings, (RetriableUpstreamError,), lambda e, d, n: delays.append(d), until=stop
        ):
            with attempt:
                attempts += 1
                if attempts == 5:
                    stop.set()
                raise RetriableUpstreamError("fault", str(attempts))
    assert attempts == 5, "beyond max_attempts until the event is set, then no more"
    assert len(delays) == 4 and all(0 <= d <= 0.002 for d in delays)


async def test_until_mode_cuts_a_long_backoff_short_when_the_event_is_set() -> None:
    stop = asyncio.Event()
    settings = RetrySettings(initial_delay=60.0, max_delay=60.0, max_attempts=2)
    attempts = 0

    async def go() -> None:
        nonlocal attempts
        async for attempt in retrying(settings, (RetriableUpstreamError,), until=stop):
            with attempt:
                attempts += 1
                raise RetriableUpstreamError("fault", "x")

    task = asyncio.create_task(go())
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(RetriableUpstreamError):
        await asyncio.wait_for(task, 2.0)
    assert attempts in (1, 2)


@pytest.mark.parametrize(
    "secret", ['quote"and\\slash-key', "ünïcode-secret", "with space+plus&amp", "exactly"]
)
def test_every_printed_form_of_a_secret_is_redacted(secret: str) -> None:
    import base64
    import json
    from urllib.parse import quote, quote_plus

    redactor = logs.SecretRedactor([secret])
    forms = [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode(),
    ]
    for form in forms:
        assert redactor.scrub(f"upstream said: {form}!") == "upstream said: [REDACTED]!", form
    assert secret not in str(redactor.scrub(secret.encode()))
    assert redactor.scrub({"k": [Path_like(secret)]}) == {"k": [logs.REDACTED]}


class Path_like:
    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text


def test_a_secret_of_exactly_the_minimum_length_is_redacted_and_longest_first() -> None:
    short = "a" * logs.MIN_SECRET
    redactor = logs.SecretRedactor([short, "xx" + short + "yy"])
    assert redactor.scrub("k=" + short) == "k=[REDACTED]"
    assert redactor.scrub("k=xx" + short + "yy") == "k=[REDACTED]", "the longer one whole"


def test_with_three_hundred_partners_keys_each_is_redacted_wherever_it_sits() -> None:
    keys = [f"key-{n:03d}-" + "0123456789abcdef"[n % 16] * 20 for n in range(300)]
    redactor = logs.SecretRedactor(keys)
    for key in keys[::7]:
        for text in (key, f"{key} at the start", f"at the end: {key}", f"in {key}side"):
            assert key not in redactor.scrub(text), text
            assert logs.REDACTED in redactor.scrub(text)
    innocent = "tick partner=12345 window_start=2026-12-02T03:00:00+00:00 key-300-"
    assert redactor.scrub(innocent) == innocent


def test_the_kafka_clients_lines_are_demoted_to_debug() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logging.getLogger("aiokafka.cluster").error("Topic x not found in cluster metadata")
    logging.getLogger("aiokafka.conn").warning("Unable connect to node with id 1")
    assert out.getvalue() == ""
    logs.configure("debug", "json", stream=out)
    logging.getLogger("aiokafka.cluster").error("Topic x not found in cluster metadata")
    (line,) = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert line["level"] == "debug"


def test_the_library_rate_limit_does_not_leak_between_configurations() -> None:
    for _ in range(2):
        out = io.StringIO()
        logs.configure("info", "json", stream=out)
        logging.getLogger("aiohttp.client").error("the same library line")
        assert "the same library line" in out.getvalue()


# What an operator reads: the line's fields, its form, and what is held back


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in out.getvalue().splitlines()]


def test_a_json_line_carries_time_level_logger_and_fields() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logs.get_logger("poller.test").info("hello", count=3, thing={1, 2}, missing=None)
    logs.get_logger("poller.test").debug("hidden")
    (line,) = lines(out)
    assert line["event"] == "hello" and line["level"] == "info"
    assert line["logger"] == "poller.test" and line["count"] == 3 and line["missing"] is None
    # What JSON cannot hold is written as text, never dropped with the line.
    assert line["thing"] == "{1, 2}"
    assert str(line["timestamp"]).endswith("Z")


def test_the_level_is_the_configured_one_for_ours_and_at_least_warning_for_chatter() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", stream=out)
    logs.get_logger("poller.test").info("not shown")
    logs.get_logger("poller.test").warning("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]
    logs.configure("debug", "json", stream=out)
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("asyncio").level == logging.WARNING
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    assert logging.getLogger("aiokafka").level == logging.DEBUG
    logs.configure("error", "json", stream=out)
    assert logging.getLogger("asyncio").level == logging.ERROR
    assert logging.getLogger("aiokafka").level == logging.ERROR
    assert len(logging.getLogger().handlers) == 1


def test_an_exception_is_rendered_with_its_traceback_and_redacted() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logs.redactor.add(["traceback-secret"])
    try:
        raise RuntimeError("failed with traceback-secret")
    except RuntimeError:
        logs.get_logger("poller.test").exception("boom")
    (line,) = lines(out)
    assert "RuntimeError" in str(line["exception"]) and "Traceback" in str(line["exception"])
    assert "traceback-secret" not in out.getvalue() and logs.REDACTED in out.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_coloured_console_lines_and_a_pipe_gets_json() -> None:
    out = Terminal()
    logs.configure("info", "auto", stream=out)
    logs.get_logger("poller.test").info("hello", count=3)
    text = out.getvalue()
    assert "hello" in text and "\x1b[" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    piped = io.StringIO()
    logs.configure("info", "auto", stream=piped)
    logs.get_logger("poller.test").info("hello")
    assert lines(piped)[0]["event"] == "hello"
    console = io.StringIO()
    logs.configure("info", "console", stream=console)
    logs.get_logger("poller.test").info("hello")
    assert "hello" in console.getvalue() and "\x1b[" not in console.getvalue()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(console.getvalue())


def test_a_library_line_repeats_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    once = logs.OncePerInterval(60)

    def passes(name: str = "lib", msg: str = "down") -> bool:
        return once.filter(logging.LogRecord(name, logging.ERROR, "", 0, msg, None, None))

    assert passes()
    clock[0] = 59.9
    assert not passes()
    assert passes(msg="other") and passes(name="lib2")
    clock[0] = 60.0
    assert passes()
    clock[0] = 100.0
    assert not passes()
    assert logs.OncePerInterval().filter(logging.LogRecord("x", 40, "", 0, "m", None, None))


def test_library_records_our_own_pass_kafka_demoted_others_limited() -> None:
    def record(name: str, msg: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, "", 0, msg, None, None)

    info = logs.LibraryRecords(logging.INFO)
    ours = record("poller.feed", "same")
    assert info.filter(ours) and info.filter(record("poller.feed", "same"))
    assert ours.levelno == logging.ERROR
    assert info.filter(record("aiohttp", {"event": "x"})) and info.filter(
        record("aiohttp", {"event": "x"})
    )
    kafka = record("aiokafka.conn", "Unable connect")
    assert not info.filter(kafka)
    assert (kafka.levelno, kafka.levelname) == (logging.DEBUG, "DEBUG")
    assert logs.LibraryRecords(logging.DEBUG).filter(record("aiokafka", "x"))
    other = record("aiokafkaish", "x")
    assert info.filter(other) and other.levelno == logging.ERROR
    assert not info.filter(record("aiokafkaish", "x"))


def test_the_redactor_keeps_what_it_knew_and_scrubs_every_shape() -> None:
    redactor = logs.SecretRedactor(["first-secret"])
    redactor.add(["second-secret", "short"])
    assert redactor.scrub("first-secret second-secret short") == ("[REDACTED] [REDACTED] short")
    assert redactor.scrub(bytearray(b"x first-secret")) == "x [REDACTED]"
    assert redactor.scrub(("first-secret", 1)) == ["[REDACTED]", 1]
    assert redactor.scrub(ValueError("bad first-secret")) == "ValueError: bad [REDACTED]"
    for kept in (None, 3, 2.5, True):
        assert redactor.scrub(kept) is kept
    assert redactor.scrub({"a": {"b": b"first-secret"}}) == {"a": {"b": "[REDACTED]"}}
    event = {"event": "e", "n": 1, "s": "first-secret"}
    assert redactor(None, "info", event) == {"event": "e", "n": 1, "s": "[REDACTED]"}
    empty = logs.SecretRedactor()
    assert empty(None, "info", event) is event


@pytest.mark.parametrize(
    "secret", ["ünïcode-secret", "abcdefg", "ünï'q\"-sec/ret\t", "with space/and-slash"]
)
def test_escaped_and_unpadded_forms_of_a_secret_are_redacted(secret: str) -> None:
    import base64
    from urllib.parse import quote, quote_plus

    redactor = logs.SecretRedactor([secret])
    for form in (
        secret.encode("unicode_escape").decode(),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        orjson.dumps(secret).decode()[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    ):
        assert redactor.scrub(f"<{form}>") == "<[REDACTED]>", form
    # Only the secret's forms: a value that merely shares most of it is left alone.
    assert redactor.scrub(f"<{secret[1:]}>") == f"<{secret[1:]}>"
    assert redactor.scrub(f"<{secret[:-1]}>") == f"<{secret[:-1]}>"


def test_the_defaults_write_info_lines_as_json_to_standard_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure()
    logs.get_logger("poller.test").info("shown")
    logs.get_logger("poller.test").debug("hidden")
    (line,) = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["event"] == "shown" and line["level"] == "info"


# Found by mutation testing (tests/MUTANTS.md): what the surviving mutants of logs.py broke


def test_bytes_that_are_not_utf8_are_still_scrubbed() -> None:
    """A library's raw bytes (a binary answer, a Kafka frame) are rarely valid UTF-8: the
    redactor still shows them, with the secret replaced, instead of failing on the line
    (a failing formatter makes logging print the raw record, secret included, to stderr)."""
    redactor = logs.SecretRedactor(["binary-secret"])
    assert redactor.scrub(b"\xff\xfe binary-secret") == "\\xff\\xfe [REDACTED]"
    assert redactor.scrub(bytearray(b"binary-secret \x80")) == "[REDACTED] \\x80"


def test_a_secret_containing_another_is_replaced_whole_whatever_their_spelling() -> None:
    """Longest first, not in alphabetical order: the inner secret sorts after the outer."""
    inner = "zzzzzz"
    redactor = logs.SecretRedactor([inner, "aa" + inner + "aa"])
    assert redactor.scrub("k=aa" + inner + "aa") == "k=[REDACTED]"
    redactor = logs.SecretRedactor(["aa" + inner + "aa", inner])
    assert redactor.scrub("k=aa" + inner + "aa") == "k=[REDACTED]"


def test_every_kafka_client_logger_is_demoted_however_deep() -> None:
    demoting = logs.LibraryRecords(logging.INFO)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender"):
        record = logging.LogRecord(name, logging.ERROR, "", 0, "Unable connect", None, None)
        assert not demoting.filter(record), name
        assert record.levelno == logging.DEBUG, name


def test_json_is_json_even_on_a_terminal() -> None:
    out = Terminal()
    logs.configure("info", "json", stream=out)
    logs.get_logger("poller.test").info("hello", count=3)
    (line,) = lines(out)
    assert line["event"] == "hello" and line["count"] == 3


def test_by_default_a_terminal_gets_console_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    logs.configure()
    logs.get_logger("poller.test").info("hello")
    assert "hello" in out.getvalue() and "\x1b[" in out.getvalue()


def test_the_first_configuration_of_a_process_writes_json_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the daemon, ``state show`` or ``tail`` start: structlog as a new process has it,
    and no secret known yet (so nothing is turned into text by the redactor)."""
    structlog.reset_defaults()
    monkeypatch.setattr(logs, "redactor", logs.SecretRedactor())
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logs.get_logger("poller.test").info("hello", count=3, thing={1, 2})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logs.get_logger("poller.test").exception("failed")
    hello, failed = lines(out)
    assert hello["event"] == "hello" and hello["count"] == 3 and hello["thing"] == "{1, 2}"
    assert hello["level"] == "info" and hello["logger"] == "poller.test"
    assert failed["level"] == "error" and "RuntimeError: boom" in str(failed["exception"])


def test_the_access_log_and_asyncio_are_quiet_below_warning_whatever_they_were() -> None:
    chatter = ("aiohttp.access", "asyncio")
    for name in chatter:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logs.configure("debug", "json", stream=io.StringIO())
    assert [logging.getLogger(name).level for name in chatter] == [logging.WARNING] * 2
    logs.configure("error", "json", stream=io.StringIO())
    assert [logging.getLogger(name).level for name in chatter] == [logging.ERROR] * 2


def test_an_excerpt_is_redacted_before_it_is_cut() -> None:
    secret = "an-api-key-0123456789"
    logs.redactor.add([secret])
    text = "x" * 190 + secret + " and more"
    cut = logs.excerpt(text, 200)
    assert len(cut) <= 200 and secret[:6] not in cut and cut.startswith("x" * 190)
    assert logs.excerpt("short", 200) == "short"
    # Only the part a secret can span from inside the limit is read; what lies past it is
    # never quoted, redacted or not.
    assert logs.excerpt("y" * 195 + secret + "z" * 10_000_000, 200) == "y" * 195 + "[REDA"


# An output that stops taking lines (a stalled log collector): a bounded queue, a writer thread


@contextlib.contextmanager
def stalled_output() -> Iterator[tuple[TextIO, int]]:
    """A text stream on a pipe of one page, already full (its next write waits until the test
    reads), and the pipe's read end. Closed read end first: a write still waiting then fails."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"#" * 63 + b"\n")
    os.set_blocking(write_end, True)
    out = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    try:
        yield out, read_end
    finally:
        os.close(read_end)
        logs.finish_by(None)
        logs.configure("info", "json", stream=io.StringIO())
        with contextlib.suppress(OSError):
            out.close()


def without_waiting(action: Callable[[], object]) -> None:
    """Runs ``action`` (some logging) in a thread that must not wait for the output: the join's
    timeout is a wedge detector, not a performance figure."""
    worker = threading.Thread(target=action, daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "logging waited for an output that takes nothing"


class PipeReader:
    """Reads the pipe's lines (the filler left out) as they come."""

    def __init__(self, read_end: int) -> None:
        self.read_end = read_end
        self.data = b""

    def lines(self) -> list[str]:
        return [x for x in self.data.decode().splitlines() if x and not x.startswith("#")]

    def until(self, done: Callable[[list[str]], bool]) -> list[str]:
        deadline = time.monotonic() + 30
        while not done(self.lines()):
            assert time.monotonic() < deadline, f"the pipe never said it: {self.data[-2000:]!r}"
            ready, _, _ = select.select([self.read_end], [], [], 0.1)
            if ready:
                self.data += os.read(self.read_end, 65536)
        return self.lines()


def dropped_so_far() -> float:
    return REGISTRY.get_sample_value("glance_poller_log_lines_dropped_total") or 0.0


def test_a_stalled_output_drops_lines_counts_them_and_says_so_once_it_takes_lines_again() -> None:
    logged = 3 * 4096 // 100
    with stalled_output() as (out, read_end):
        before = dropped_so_far()
        logs.configure("info", "json", stream=out, queue_bytes=4096)
        log = logs.get_logger("poller.test")

        def log_lines() -> None:
            for n in range(logged):
                log.info("line", n=n, padding="x" * 40)  # about 150 bytes each

        without_waiting(log_lines)
        dropped = dropped_so_far() - before
        assert 0 < dropped < logged
        # The reader comes back: the queue is written, then one line says how many were lost.
        reader = PipeReader(read_end)
        reader.until(lambda ls: any("log lines dropped" in x for x in ls))
        assert logs.flush(30)
        found = reader.until(lambda ls: len(ls) >= logged - dropped + 1)
        entries = [orjson.loads(x) for x in found]
        (notice,) = [e for e in entries if e["event"] == "log lines dropped"]
        assert notice["dropped"] == dropped and notice["level"] == "warning"
        written = [e["n"] for e in entries if e["event"] == "line"]
        assert len(written) + dropped == logged
        # In order, the first among them: the lines that found the queue full are the ones lost.
        assert written == sorted(written) and written[0] == 0
        log.info("after")
        assert logs.flush(30)
        assert '"after"' in reader.until(lambda ls: len(ls) > len(found))[-1]
        assert dropped_so_far() - before == dropped


def test_a_queued_line_is_redacted_tracebacks_and_library_lines_included() -> None:
    with stalled_output() as (out, read_end):
        logs.configure("info", "json", stream=out)
        logs.redactor.add(["queued-secret-42"])
        log = logs.get_logger("poller.test")

        def log_secrets() -> None:
            log.info("calling", body='{"apiKey": "queued-secret-42"}')
            try:
                raise RuntimeError("failed with queued-secret-42")
            except RuntimeError:
                log.exception("boom")
            logging.getLogger("aiohttp.client").error("library says %s", "queued-secret-42")

        without_waiting(log_secrets)
        found = PipeReader(read_end).until(lambda ls: len(ls) >= 3)
        assert "queued-secret-42" not in "\n".join(found)
        calling, boom, library = (orjson.loads(x) for x in found)
        assert calling["body"] == '{"apiKey": "[REDACTED]"}'
        assert "RuntimeError: failed with [REDACTED]" in boom["exception"]
        assert "Traceback" in boom["exception"]
        assert library["event"] == "library says [REDACTED]"


def test_the_exit_waits_for_a_stalled_output_no_longer_than_the_stop_deadline() -> None:
    with stalled_output() as (out, read_end):
        logs.configure("info", "json", stream=out)
        log = logs.get_logger("poller.test")
        without_waiting(lambda: log.info("behind the filler", padding="x" * 5000))
        without_waiting(lambda: log.info("queued"))
        logs.finish_by(time.monotonic() + 0.2)
        flushed: list[bool] = []
        without_waiting(lambda: flushed.append(logs.flush()))
        assert flushed == [False]
        found = PipeReader(read_end).until(lambda ls: any('"queued"' in x for x in ls))
        assert len(found) == 2
