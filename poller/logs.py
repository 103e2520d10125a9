"""structlog set-up: JSON lines (console rendering on a terminal) and secret redaction.

Every line, ours or a library's routed through stdlib logging, passes the redactor last
before rendering, so a secret cannot reach the output even inside a formatted traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"
MIN_SECRET = 6


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


def _orjson_dumps(value: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _renderer(fmt: str, stream: TextIO) -> Processor:
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if use_console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer(serializer=_orjson_dumps)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and route the standard library's loggers through it."""
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
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            _renderer(fmt, out),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
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
