"""``glance-poller check``: config, credentials, broker and topics, as a 0/1 verdict.

Validates the configuration, calls the Glance Activity Service once per partner, connects
to Kafka with the daemon's own connection settings (security options included), checks
that the four topics exist (or creates the missing ones with ``--create-topics``), prints a
table of what passed and exits 0 only when everything did. Every step is bounded by
``--timeout``, so a silent broker or service cannot hang a deployment pipeline.

The table goes to stdout; logging is set to warnings on stderr, and aiokafka's own error
lines (one per failed connection attempt) are captured and folded into the table instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from poller import logs
from poller.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    ConfigError,
    UpstreamError,
)
from poller.glance.client import GlanceClient, upstream_tls
from poller.publisher import connection_options
from poller.settings import (
    Config,
    GlanceSettings,
    KafkaSettings,
    Partner,
    RetrySettings,
    TopicSettings,
    load_config,
)

Result = Literal["ok", "created", "FAILED", "skipped"]
OK: Result = "ok"
CREATED: Result = "created"
FAILED: Result = "FAILED"
SKIPPED: Result = "skipped"

DEFAULT_TIMEOUT = 10.0
REJECTED = "rejected (wrong API key or unknown partner)"
# The widest the detail column's underline gets; longer details simply run on.
_RULE_MAX = 60


@dataclass(frozen=True)
class Row:
    check: str
    result: Result
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.result == FAILED


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--create-topics", action="store_true", help="create missing topics")
    parser.add_argument(
        "--partitions",
        type=_positive_int,
        default=3,
        metavar="N",
        help="partitions of a topic created by --create-topics (default: 3)",
    )
    parser.add_argument(
        "--replication-factor",
        type=_positive_int,
        default=1,
        metavar="N",
        help="replication factor of a topic created by --create-topics (default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"limit of each step: upstream call, Kafka connection (default: {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace, config_path: Path | None) -> int:
    # Interactive tool: the table is the output; anything logged goes to stderr, warnings up.
    logs.configure("warning", "auto", stream=sys.stderr)
    return asyncio.run(check(args, config_path, sys.stdout))


async def check(args: argparse.Namespace, config_path: Path | None, out: TextIO) -> int:
    """Run every check, print the table and the verdict, return the exit code (0/1)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        # Nothing else is attempted: every other check depends on the configuration.
        return report([Row("config", FAILED, str(problem)) for problem in exc.problems], out)
    logs.redactor.add(config.secrets())
    rows = [Row("config", OK, _describe_config(config))]
    rows.extend(await _connectivity(config, args))
    # Defence in depth: no error text we produce carries a secret, and none ever may.
    scrub = logs.redactor.scrub
    return report([Row(r.check, r.result, str(scrub(r.detail))) for r in rows], out)


def report(rows: Sequence[Row], out: TextIO) -> int:
    print(format_table(rows), file=out)
    print(file=out)
    print(verdict(rows), file=out)
    out.flush()
    return EXIT_FAILURE if any(row.failed for row in rows) else EXIT_OK


def format_table(rows: Sequence[Row]) -> str:
    """Plain aligned columns: readable on a terminal and in a CI log alike."""
    cells = [("check", "result", "detail")]
    cells += [(r.check, r.result, " ".join(r.detail.split())) for r in rows]
    check_width = max(len(c[0]) for c in cells)
    result_width = max(len(c[1]) for c in cells)
    detail_width = min(max(len(c[2]) for c in cells), _RULE_MAX)
    lines = []
    for index, (name, result, detail) in enumerate(cells):
        lines.append(f"{name:<{check_width}}  {result:<{result_width}}  {detail}".rstrip())
        if index == 0:
            lines.append(f"{'-' * check_width}  {'-' * result_width}  {'-' * detail_width}")
    return "\n".join(lines)


def verdict(rows: Sequence[Row]) -> str:
    failed = sum(row.failed for row in rows)
    skipped = sum(row.result == SKIPPED for row in rows)
    text = "all checks passed" if failed == 0 else f"{failed} check(s) failed"
    return text + (f" ({skipped} skipped)" if skipped else "")


def _describe_config(config: Config) -> str:
    where = str(config.source) if config.source is not None else "environment only"
    return f"{where}: {len(config.partners)} partner(s)"


async def _connectivity(config: Config, args: argparse.Namespace) -> list[Row]:
    settings = config.settings
    timeout: float = args.timeout
    glance = settings.glance.model_copy(
        update={"request_timeout": min(settings.glance.request_timeout, timeout)}
    )
    with _captured_kafka_logs() as kafka_log:
        connector = aiohttp.TCPConnector(ssl=upstream_tls(glance))
        async with aiohttp.ClientSession(connector=connector) as http:
            partner_rows, kafka_rows = await asyncio.gather(
                asyncio.gather(
                    *(_check_partner(http, glance, p, timeout) for p in config.partners)
                ),
                _check_kafka(settings.kafka, settings.topics, args, kafka_log),
            )
    return [*partner_rows, *kafka_rows]


async def _check_partner(
    http: aiohttp.ClientSession, glance: GlanceSettings, partner: Partner, limit: float
) -> Row:
    """One counts call over the last minute: the cheapest call that needs valid credentials."""
    name = f"partner {partner.id} credentials"
    client = GlanceClient(http, glance, partner, RetrySettings(max_attempts=1))
    try:
        # The request has its own time-out; this one also bounds connecting and TLS.
        async with asyncio.timeout(limit + 1):
            await client.server_now()  # a fresh client asks: a one-minute counts call
    except AuthenticationFailed:
        return Row(name, FAILED, REJECTED)
    except UpstreamError as exc:
        # Our errors name the operation, host and reason; never the request body or key.
        return Row(name, FAILED, str(exc))
    except TimeoutError:
        return Row(name, FAILED, f"no answer from {glance.base_url} within {limit:g}s")
    except Exception as exc:  # a diagnostic tool reports, it does not crash
        return Row(name, FAILED, f"{type(exc).__name__}: {exc}")
    return Row(name, OK, f"accepted by {glance.base_url}")


class _KafkaLog(logging.Handler):
    """Keeps aiokafka's warnings and errors (the reason a connection failed) for the table."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:
            self.handleError(record)

    def reasons_since(self, mark: int) -> str:
        seen: list[str] = []
        for message in self.messages[mark:]:
            if message not in seen:
                seen.append(message)
        return "; ".join(seen)


@contextlib.contextmanager
def _captured_kafka_logs() -> Iterator[_KafkaLog]:
    """aiokafka logs an error per failed connection attempt: captured, not printed."""
    logger = logging.getLogger("aiokafka")
    saved = (logger.level, logger.propagate, logger.handlers[:])
    handler = _KafkaLog()
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.handlers[:] = [handler]
    try:
        yield handler
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def _topic_roles(topics: TopicSettings) -> dict[str, list[str]]:
    """Topic name -> the settings that name it (two roles may share one topic)."""
    roles: dict[str, list[str]] = {}
    for role in ("completed", "started", "counts", "dlq"):
        roles.setdefault(getattr(topics, role), []).append(role)
    return roles


async def _check_kafka(
    kafka: KafkaSettings, topics: TopicSettings, args: argparse.Namespace, kafka_log: _KafkaLog
) -> list[Row]:
    name = f"kafka {kafka.bootstrap_servers}"
    roles = _topic_roles(topics)
    timeout: float = args.timeout

    def topic_check(topic: str) -> str:
        return f"topic {topic} ({', '.join(roles[topic])})"

    def unreachable(reason: str) -> list[Row]:
        return [
            Row(name, FAILED, reason),
            *(Row(topic_check(t), SKIPPED, "kafka not reachable") for t in roles),
        ]

    try:
        options = connection_options(kafka)
    except (ssl.SSLError, OSError) as exc:
        return unreachable(f"cannot set up TLS: {exc}")
    mark = len(kafka_log.messages)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(timeout * 1000))
    try:
        try:
            async with asyncio.timeout(timeout):
                await admin.start()
                cluster: dict[str, Any] = await admin.describe_cluster()
                # All topics (a null list): naming ours would let the broker auto-create them.
                described: list[dict[str, Any]] = await admin.describe_topics()
        except TimeoutError:
            why = kafka_log.reasons_since(mark)
            return unreachable(f"no answer within {timeout:g}s" + (f" ({why})" if why else ""))
        except Exception as exc:  # KafkaError mostly; any failure is reported, not raised
            return unreachable(kafka_log.reasons_since(mark) or f"{type(exc).__name__}: {exc}")
        brokers = len(cluster.get("brokers") or ())
        rows = [Row(name, OK, f"reachable, {brokers} broker(s)")]
        existing = {t["topic"]: t for t in described if t.get("error_code") == 0}
        missing = [topic for topic in roles if topic not in existing]
        created: dict[str, Row] = {}
        if missing and args.create_topics:
            created = await _create_topics(admin, missing, args, topic_check)
        for topic in roles:
            if topic in existing:
                partitions = len(existing[topic].get("partitions") or ())
                rows.append(Row(topic_check(topic), OK, f"exists, {partitions} partition(s)"))
            elif topic in created:
                rows.append(created[topic])
            else:
                rows.append(
                    Row(
                        topic_check(topic),
                        FAILED,
                        "missing: create it, or run with --create-topics",
                    )
                )
        return rows
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout)


async def _create_topics(
    admin: AIOKafkaAdminClient,
    missing: list[str],
    args: argparse.Namespace,
    topic_check: Callable[[str], str],
) -> dict[str, Row]:
    partitions: int = args.partitions
    replication: int = args.replication_factor
    timeout: float = args.timeout
    new = [NewTopic(topic, partitions, replication) for topic in missing]
    try:
        async with asyncio.timeout(timeout + 1):
            response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
    except TimeoutError:
        reason = f"not created: no answer within {timeout:g}s"
        return {t: Row(topic_check(t), FAILED, reason) for t in missing}
    except (KafkaError, OSError) as exc:
        reason = f"not created: {type(exc).__name__}: {exc}"
        return {t: Row(topic_check(t), FAILED, reason) for t in missing}
    rows: dict[str, Row] = {}
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and entry[2] else ""
        error = for_code(code) if code else None
        if error is None:
            detail = f"{partitions} partition(s), replication factor {replication}"
            rows[topic] = Row(topic_check(topic), CREATED, detail)
        elif error is TopicAlreadyExistsError:
            rows[topic] = Row(topic_check(topic), OK, "exists (created meanwhile)")
        else:
            reason = f"not created: {error.__name__}" + (f": {message}" if message else "")
            rows[topic] = Row(topic_check(topic), FAILED, reason)
    for topic in missing:
        rows.setdefault(topic, Row(topic_check(topic), FAILED, "not created: no answer for it"))
    return rows
