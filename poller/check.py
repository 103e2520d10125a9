"""``glance-poller check``: config, credentials, broker and topics, as a 0/1 verdict.

Validates the configuration, calls the Glance Activity Service once per partner, connects
to Kafka with the daemon's own connection settings (security options included), checks
that the four topics exist (or creates the missing ones with ``--create-topics``), prints a
table of what passed and exits 0 only when everything did. Every step is bounded by
``--timeout``, so a silent broker or service cannot hang a deployment pipeline.

A missing topic is a warning, not a failure, when the brokers create topics on first use
(``auto.create.topics.enable``, asked of every broker): the daemon then works as it is. It
fails when they do not, or when their setting cannot be read. ``--offline`` validates the
configuration alone, contacting nothing: exit 0, or 2 with every problem listed by key.

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
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from poller import logs
from poller.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    ConfigError,
    UpstreamError,
)
from poller.glance.client import GlanceClient, upstream_connector
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

Result = Literal["ok", "created", "warning", "FAILED", "skipped"]
OK: Result = "ok"
CREATED: Result = "created"
# Worth knowing, but the daemon works as things are: does not fail the verdict.
WARNING: Result = "warning"
FAILED: Result = "FAILED"
SKIPPED: Result = "skipped"

AUTO_CREATE = "auto.create.topics.enable"
# What an auto-created topic gets, said beside the warning.
_BROKER_DEFAULTS = (AUTO_CREATE, "num.partitions", "default.replication.factor")
# --create-topics' replication factor when none is given: min(this, number of brokers).
MAX_DEFAULT_REPLICATION = 3

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
    # --offline contacts nothing, so it cannot create anything either.
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--create-topics", action="store_true", help="create missing topics")
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
        default=None,
        metavar="N",
        help="replication factor of a topic created by --create-topics "
        f"(default: min({MAX_DEFAULT_REPLICATION}, number of brokers))",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"limit of each step: upstream call, Kafka connection (default: {DEFAULT_TIMEOUT:g})",
    )
    mode.add_argument(
        "--offline",
        action="store_true",
        help="check the configuration only, contacting nothing: exit 0 if valid, 2 if not "
        "(every problem listed by key)",
    )


def default_replication(requested: int | None, brokers: int) -> int:
    """The replication factor of a created topic: as asked, else min(3, number of brokers)."""
    if requested is not None:
        return requested
    return max(1, min(MAX_DEFAULT_REPLICATION, brokers))


def run(args: argparse.Namespace, config_path: Path | None) -> int:
    # Interactive tool: the table is the output; anything logged goes to stderr, warnings up.
    logs.configure("warning", "auto", stream=sys.stderr)
    if args.offline:
        return check_offline(config_path, sys.stdout)
    return asyncio.run(check(args, config_path, sys.stdout))


def check_offline(config_path: Path | None, out: TextIO) -> int:
    """The configuration alone: nothing is contacted. 0 when valid, 2 (listing every problem
    by key) when not, as the daemon itself would exit."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report([Row("config", FAILED, str(problem)) for problem in exc.problems], out)
        return EXIT_CONFIG
    rows = [Row("config", OK, _describe_config(config))]
    skipped = "offline: not contacted"
    rows += [Row(f"partner {p.id} credentials", SKIPPED, skipped) for p in config.partners]
    rows.append(Row(f"kafka {config.settings.kafka.bootstrap_servers}", SKIPPED, skipped))
    return report(rows, out)


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
    warned = sum(row.result == WARNING for row in rows)
    skipped = sum(row.result == SKIPPED for row in rows)
    text = "all checks passed" if failed == 0 else f"{failed} check(s) failed"
    notes = [f"{warned} warning(s)"] * bool(warned) + [f"{skipped} skipped"] * bool(skipped)
    return text + (f" ({', '.join(notes)})" if notes else "")


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
        connector = upstream_connector(glance, len(config.partners))
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
        node_ids = [int(b["node_id"]) for b in cluster.get("brokers") or ()]
        rows = [Row(name, OK, f"reachable, {len(node_ids)} broker(s)")]
        existing = {t["topic"]: t for t in described if t.get("error_code") == 0}
        missing = [topic for topic in roles if topic not in existing]
        created: dict[str, Row] = {}
        absent: tuple[Result, str] = (FAILED, "missing")  # asked of the brokers if one is
        if missing and args.create_topics:
            replication = default_replication(args.replication_factor, len(node_ids))
            created = await _create_topics(admin, missing, args, replication, topic_check)
        elif missing:
            absent = await _missing_result(admin, node_ids, timeout)
        for topic in roles:
            if topic in existing:
                partitions = len(existing[topic].get("partitions") or ())
                rows.append(Row(topic_check(topic), OK, f"exists, {partitions} partition(s)"))
            elif topic in created:
                rows.append(created[topic])
            else:
                rows.append(Row(topic_check(topic), *absent))
        return rows
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout)


async def broker_defaults(
    admin: AIOKafkaAdminClient, node_ids: Sequence[int]
) -> dict[int, dict[str, str] | str]:
    """Every broker's auto-creation settings (``_BROKER_DEFAULTS``), or why they are unknown."""
    wanted = dict.fromkeys(_BROKER_DEFAULTS)
    resources = [ConfigResource(ConfigResourceType.BROKER, str(n), wanted) for n in node_ids]
    found: dict[int, dict[str, str] | str] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            node = int(resource["resource_name"])
            code = resource["error_code"]
            if code:
                error = for_code(code)
                found[node] = error.__name__ + (
                    f": {resource['error_message']}" if resource.get("error_message") else ""
                )
            else:
                found[node] = {
                    e["config_names"]: str(e["config_value"]) for e in resource["config_entries"]
                }
    for node in node_ids:
        found.setdefault(node, "no answer for this broker")
    return found


def missing_topic_result(defaults: dict[int, dict[str, str] | str]) -> tuple[Result, str]:
    """What a missing topic means, given every broker's settings: a warning when every broker
    creates topics on first use (the daemon works), a failure when one does not or when that
    cannot be told."""
    fix = "create it, or run with --create-topics"
    unknown = {n: why for n, why in defaults.items() if isinstance(why, str)}
    known = {n: c for n, c in defaults.items() if not isinstance(c, str)}
    off = sorted(n for n, c in known.items() if c.get(AUTO_CREATE, "").lower() != "true")
    if off:
        which = "the broker does" if len(defaults) == 1 else f"broker(s) {off} do"
        return FAILED, f"missing and {which} not create topics ({AUTO_CREATE}=false): {fix}"
    if unknown or not known:
        why = "; ".join(f"broker {n}: {reason}" for n, reason in sorted(unknown.items()))
        return FAILED, f"missing: {fix} (cannot tell whether brokers auto-create: {why})"
    first = known[min(known)]
    created_as = (
        f"{first.get('num.partitions', '?')} partition(s), "
        f"replication factor {first.get('default.replication.factor', '?')}"
    )
    return WARNING, (
        f"missing: the broker creates it on first use ({AUTO_CREATE}=true, {created_as}); "
        "--create-topics to choose"
    )


async def _missing_result(
    admin: AIOKafkaAdminClient, node_ids: Sequence[int], limit: float
) -> tuple[Result, str]:
    try:
        async with asyncio.timeout(limit):
            defaults = await broker_defaults(admin, node_ids)
    except TimeoutError:
        defaults = dict.fromkeys(node_ids, f"no answer within {limit:g}s")
    except Exception as exc:  # e.g. not authorised to describe configs: reported
        defaults = dict.fromkeys(node_ids, f"{type(exc).__name__}: {exc}")
    return missing_topic_result(defaults)


async def _create_topics(
    admin: AIOKafkaAdminClient,
    missing: list[str],
    args: argparse.Namespace,
    replication: int,
    topic_check: Callable[[str], str],
) -> dict[str, Row]:
    partitions: int = args.partitions
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
