"""structlog set-up: JSON lines (console rendering on a terminal) and secret redaction.

Every line, ours or a library's routed through stdlib logging, passes the redactor last
before rendering, so a secret cannot reach the output even inside a formatted traceback.

Output that is a file descriptor (a pipe to a log collector, a terminal, a file) is written by
a thread of its own from a bounded queue: a reader that stops reading never stops the event
loop; the lines it does not take are dropped and counted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from poller import metrics

REDACTED = "[REDACTED]"
MIN_SECRET = 6
# Lines waiting for the output, at most (bytes); more are dropped and counted.
QUEUE_BYTES = 2 * 1024 * 1024
# The writer's largest single write.
BATCH_BYTES = 64 * 1024
# How long the exit waits for queued lines when no stop deadline was set.
EXIT_GRACE = 5.0


class SecretRedactor:
    """Replaces every known secret, wherever it appears in a log event, with a marker."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._heads: frozenset[str] = frozenset()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Every form a secret can be printed in: as it is, JSON- or Python-escaped (an
        # upstream fault echoing the request), URL-encoded, base64 (SASL PLAIN). Longest
        # first, so a secret that contains another is replaced whole. Values shorter than
        # MIN_SECRET are no real credential, and replacing them would shred every line.
        forms = {form for secret in secrets if len(secret) >= MIN_SECRET for form in _forms(secret)}
        merged = {s for s in (*self._secrets, *forms) if len(s) >= MIN_SECRET}
        self._secrets = sorted(merged, key=len, reverse=True)
        self._heads = frozenset(secret[:MIN_SECRET] for secret in self._secrets)

    def excerpt(self, text: str, limit: int) -> str:
        """At most ``limit`` characters of ``text``, its secrets redacted first, then cut. Only
        the part a secret reaching into the first ``limit`` characters can span is read: a
        hostile answer's megabytes are not scanned to quote forty characters of them."""
        longest = len(self._secrets[0]) if self._secrets else 0
        return str(self.scrub(text[: limit + max(0, longest - 1)]))[:limit]

    def scrub(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "backslashreplace")
        if isinstance(value, str):
            # A secret can only be there if its first characters are: one pass over the text,
            # however many secrets (three forms of each of 300 partners' keys) there are.
            heads = {value[i : i + MIN_SECRET] for i in range(len(value) - MIN_SECRET + 1)}
            if self._heads.isdisjoint(heads):
                return value
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        if value is None or isinstance(value, int | float | bool):
            return value
        return self.scrub(str(value))

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        if not self._secrets:
            return event_dict
        return {key: self.scrub(value) for key, value in event_dict.items()}


def _forms(secret: str) -> set[str]:
    encoded = secret.encode()
    return {
        secret,
        orjson.dumps(secret).decode()[1:-1],
        json.dumps(secret)[1:-1],  # with \uXXXX escapes, as ASP.NET and Python write JSON
        repr(secret)[1:-1],
        repr(encoded)[2:-1],
        secret.encode("unicode_escape").decode(),
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        base64.b64encode(encoded).decode(),
        base64.b64encode(encoded).decode().rstrip("="),
    }


redactor = SecretRedactor()


def excerpt(text: str, limit: int) -> str:
    """At most ``limit`` characters of outside text (an upstream fault, a header, a client
    library's error) to quote in a message: its secrets redacted first, then cut. Cut first,
    a secret across the cut would be left partly readable, no longer whole to be redacted."""
    return redactor.excerpt(text, limit)


class OncePerInterval(logging.Filter):
    """Lets a library's repeated message through once per interval: an outage is said once,
    not every second by every reconnect attempt."""

    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__()
        self._seconds = seconds
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self._seconds) < self._seconds:
            return False
        self._last[key] = now
        return True


class LibraryRecords(logging.Filter):
    """Third-party loggers under the daemon's rules. aiokafka's lines (an ERROR per node and
    attempt during an outage, a WARNING per auto-created topic on a first start) say what the
    publisher already says once when Kafka starts failing and once when it recovers: they
    become DEBUG. Other libraries' repeated lines pass once per interval."""

    DEMOTED = ("aiokafka",)

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level
        self._once = OncePerInterval()

    def filter(self, record: logging.LogRecord) -> bool:
        # structlog's own records carry a dict, and are ours: only plain library text is
        # rate-limited.
        if record.name.startswith("poller") or not isinstance(record.msg, str):
            return True
        if record.name.split(".", 1)[0] in self.DEMOTED:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self._level <= logging.DEBUG
        return self._once.filter(record)


class QueuedLines(logging.Handler):
    """Writes formatted lines to a file descriptor from a thread of its own.

    Each record is formatted where it is logged, so the redactor runs on it there (a
    traceback is rendered while it is live), and the line is queued; the writer thread writes
    the queue to ``fd``. A reader that stops reading blocks only that thread: the queue fills
    to ``limit`` bytes, further lines are dropped and counted
    (``glance_poller_log_lines_dropped_total``), and once the writer gets through again and the
    queue is half empty, one line says how many were dropped. A reader that is gone (EPIPE)
    drops every line from then on. ``flush`` waits for the queue, never longer than it is told.
    """

    def __init__(self, fd: int, encoding: str = "utf-8", limit: int = QUEUE_BYTES) -> None:
        super().__init__()
        self._fd = fd
        self._encoding = encoding
        self._limit = limit
        self._lines: deque[bytes] = deque()
        self._queued = 0  # bytes in _lines
        self._writing = False  # lines taken from the queue, not yet written
        self._dropped = 0  # since the last line saying so
        self._closed = False
        self._gone = False  # the reader is gone: nothing will ever be written again
        self._changed = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._encode(self.format(record))
        except Exception:
            self.handleError(record)
            return
        with self._changed:
            refused = (
                self._closed
                or self._gone
                or (bool(self._lines) and self._queued + len(line) > self._limit)
            )
            if refused:
                self._dropped += 1
            else:
                self._lines.append(line)
                self._queued += len(line)
                self._changed.notify_all()
        if refused:
            metrics.LOG_LINES_DROPPED.inc()

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for every queued line to be written; whether they
        were."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._lines or self._writing) and not self._gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return not self._lines

    def flush(self) -> None:
        # logging.shutdown flushes every handler at exit: bounded by the stop's deadline.
        self.drain(_time_to_exit())

    def close(self) -> None:
        # The writer finishes what is queued, in the background; nothing more is taken.
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        super().close()

    def _encode(self, text: str) -> bytes:
        return (text + "\n").encode(self._encoding, "backslashreplace")

    def _write_lines(self) -> None:
        while True:
            with self._changed:
                while not self._lines and not self._closed:
                    self._changed.wait()
                if not self._lines:
                    return
                batch = [self._lines.popleft()]
                size = len(batch[0])
                while self._lines and size + len(self._lines[0]) <= BATCH_BYTES:
                    batch.append(self._lines.popleft())
                    size += len(batch[-1])
                self._queued -= size
                self._writing = True
            written = self._write(b"".join(batch))
            with self._changed:
                if not written:
                    self._dropped += len(batch)
                    dropped = 0
                elif self._dropped and self._queued <= self._limit // 2:
                    dropped, self._dropped = self._dropped, 0
                else:
                    dropped = 0
            if not written:
                metrics.LOG_LINES_DROPPED.inc(len(batch))
            notice = self._notice(dropped) if dropped else b""
            with self._changed:
                if notice:
                    self._lines.appendleft(notice)
                    self._queued += len(notice)
                self._writing = False
                self._changed.notify_all()

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # an output someone made non-blocking
                select.select([], [self._fd], [], 1.0)
            except BrokenPipeError:
                self._gone = True
                return False
            except OSError:  # a full disk, an I/O error: these lines are lost, not the next
                return False
        return True

    def _notice(self, dropped: int) -> bytes:
        record = logging.LogRecord(
            "poller.logs", logging.WARNING, __file__, 0, "log lines dropped", None, None
        )
        record.dropped = dropped
        record.reason = "the log output did not take them (its reader stalled)"
        try:
            return self._encode(self.format(record))
        except Exception:
            return self._encode(f"{dropped} log lines dropped: the log output did not take them")


_stop_deadline: float | None = None


def finish_by(deadline: float | None) -> None:
    """The process is stopping and must be gone by ``deadline`` (``time.monotonic``): the lines
    still queued at exit are waited for until then, no longer (None: ``EXIT_GRACE``)."""
    global _stop_deadline
    _stop_deadline = deadline


def _time_to_exit() -> float:
    if _stop_deadline is None:
        return EXIT_GRACE
    return max(0.0, _stop_deadline - time.monotonic())


def flush(timeout: float | None = None) -> bool:
    """Waits for the lines queued for the output to be written (up to ``timeout`` seconds, by
    default until the stop's deadline); whether they were."""
    wait = _time_to_exit() if timeout is None else timeout
    return all(h.drain(wait) for h in logging.getLogger().handlers if isinstance(h, QueuedLines))


def _handler(stream: TextIO, queue_bytes: int) -> logging.Handler:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        # In memory (a test's buffer): a write cannot block.
        return logging.StreamHandler(stream)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()  # what was printed before the first line comes before it
    return QueuedLines(fd, getattr(stream, "encoding", None) or "utf-8", queue_bytes)


def _orjson_dumps(value: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _renderer(fmt: str, stream: TextIO) -> Processor:
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if use_console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer(serializer=_orjson_dumps)


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    queue_bytes: int = QUEUE_BYTES,
) -> None:
    """Configure structlog and route the standard library's loggers through it; an output with
    a file descriptor is written from a queue of at most ``queue_bytes`` (``QueuedLines``)."""
    out = stream or sys.stdout
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=("dropped", "reason")),
            *shared,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            _renderer(fmt, out),
        ],
    )
    handler = _handler(out, queue_bytes)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, QueuedLines):
            previous.drain(EXIT_GRACE)
            previous.close()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Library chatter below warning is noise for operators; ours follows the configured level.
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
    logging.getLogger("aiokafka").setLevel(numeric_level)
    handler.addFilter(LibraryRecords(numeric_level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
