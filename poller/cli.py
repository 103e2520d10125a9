"""The ``glance-poller`` command: run, emulator, state, tail."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import orjson
import structlog

from poller import logs
from poller.check import add_arguments as check_arguments
from poller.cursor import Cursor
from poller.emulator import cli as emulator_cli
from poller.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, PollerError, StateError
from poller.launch import stop_requested
from poller.settings import Config, load_config
from poller.state import StateStore, move_aside, parse_cli_date

STATE_SUFFIX = ".backfill.sqlite3"

log = logs.get_logger("poller.cli")
STREAMS = ("completed", "started", "reconcile")


def _config_path(args: argparse.Namespace) -> Path | None:
    value = args.config or os.environ.get("POLLER_CONFIG")
    return Path(value) if value else None


def _load(args: argparse.Namespace, *, need_credentials: bool) -> Config:
    config = load_config(_config_path(args), need_credentials=need_credentials)
    logs.configure(config.settings.log.level, config.settings.log.format)
    logs.redactor.add(config.secrets())
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    from poller.service import Service

    config = _load(args, need_credentials=True)
    return asyncio.run(Service(config).run(once=args.once))


def _cmd_state(args: argparse.Namespace) -> int:
    config = _load(args, need_credentials=False)
    path = config.settings.state.path
    if args.state_command == "show":
        # Read-only and lock-free: a consistent snapshot, also while the daemon runs.
        store = StateStore.read_only(path)
        try:
            snapshot = store.snapshot(now=datetime.now(UTC))
        finally:
            store.close()
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    try:
        store = StateStore.open(path)
    except StateError as exc:
        if "locked" in exc.problem or not path.exists():
            raise
        return _start_over(args, exc)
    try:
        if args.to is not None:
            return _move_cursor(store, config, args)
        scope = f"partner {args.partner}" if args.partner else "every partner"
        scope += f", stream {args.stream}" if args.stream else ", every stream"
        answer = _confirm(args, f"Forget the cursors and emitted ids of {scope}?")
        if answer is not None:
            return answer
        removed = store.reset(args.partner, args.stream)
        print(f"reset {removed} cursor(s) of {scope}")
        return EXIT_OK
    finally:
        store.close()


def _start_over(args: argparse.Namespace, exc: StateError) -> int:
    """The way out of an unusable state file: moved aside (kept), the next start is fresh."""
    print(f"glance-poller: {exc}", file=sys.stderr)
    answer = _confirm(args, "Move it aside and start over (history is read again)?")
    if answer is not None:
        return answer
    kept = move_aside(Path(exc.path))
    print(f"moved {exc.path} to {kept}; the next start begins a new state file")
    return EXIT_OK


def _confirm(args: argparse.Namespace, question: str) -> int | None:
    """None to go ahead; otherwise the exit code for not going ahead."""
    if args.yes:
        return None
    if not sys.stdin.isatty():
        print("refusing without --yes (no terminal to confirm on)", file=sys.stderr)
        return EXIT_FAILURE
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return None
    print("nothing changed")
    return EXIT_OK


def _move_cursor(store: StateStore, config: Config, args: argparse.Namespace) -> int:
    """Set the completed stream's cursor: the next scan starts there (ids already emitted
    inside the horizon are still not emitted again)."""
    try:
        moment = parse_cli_date(args.to, config.settings.glance.clock_tolerance)
    except ValueError as exc:
        print(f"glance-poller: --to: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.partner:
        partners = [args.partner]
    else:
        configured = {p.id for p in config.settings.partners}
        partners = sorted(configured | set(store.partners("completed")))
    if not partners:
        print("no partner to move: none configured and none in the state", file=sys.stderr)
        return EXIT_FAILURE
    names = ", ".join(map(str, partners))
    answer = _confirm(args, f"Move the completed cursor of partner(s) {names} to {moment}?")
    if answer is not None:
        return answer
    for partner in partners:
        store.commit(partner, cursors={"completed": Cursor(moment)})  # the one exception
    print(f"moved the completed cursor of partner(s) {names} to {moment.isoformat()}")
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    from poller.tail import tail

    config = _load(args, need_credentials=False)
    topics = config.settings.topics
    names = args.topic or [topics.completed]
    return asyncio.run(
        tail(
            config.settings.kafka,
            names,
            from_beginning=args.from_beginning,
            as_json=args.json,
            partner=args.partner,
            max_events=args.max_events,
            until_end=args.until_end,
        )
    )


def _cmd_emulator(args: argparse.Namespace) -> int:
    return emulator_cli.run(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from poller import check

    return check.run(args, _config_path(args))


def _cmd_backfill(args: argparse.Namespace) -> int:
    from poller import backfill

    config = _load(args, need_credentials=True)
    return backfill.run(args, config)


# -- backfill's arguments ---------------------------------------------------------------

_DESCRIPTION = """\
Replay the sessions that started in [--since, --until) into the live topics (completed
events, and dead letters for bad records), with the event ids the daemon gives them, so
consumers can drop the duplicates. The range is cut into windows, backfill.concurrency of them
(4) fetched at once, each committed under its own cursor; fewer at once while upstream answers
429/503.

It is resumable: progress is committed after every page Kafka acknowledged, in a state file
of its own (never the daemon's, so it can run beside a running daemon and never moves the
live cursor). Ctrl-C or SIGTERM finishes the page in flight and stops with exit code 130 (143
for SIGTERM); a second one abandons that page, to be sent again with the same ids. The same
command then resumes where it stopped, and says "already complete" once the range is done.
The ids it sent are kept in that file, so an overlapping range does not send them again: to
replay a range once more, give it another --state file.

The range must lie in the past (upstream's clock). Sessions still open when it runs are not
listed upstream yet, so they are not replayed; a warning says how many.
"""

_EPILOG = """\
dates: an ISO date (2026-01-31) or date and time (2026-01-31T06:00:00Z, with an offset
such as +01:00 or without one). A date or time WITHOUT a zone is taken as UTC (a date as UTC
midnight). The Activity Service itself would read a zone-less date as US Eastern time;
glance-poller always sends it explicit UTC instants. Whole seconds only. Dates before
2000-01-01 (the service holds nothing older) or after the host's clock plus
glance.clock_tolerance are refused (exit 2), before anything connects.
"""


def backfill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for flag, help_text in (
        ("--since", "start of the range, inclusive (ISO date or date-time; no zone = UTC)"),
        ("--until", "end of the range, exclusive (ISO date or date-time; no zone = UTC)"),
    ):
        # Read with the configuration (backfill.run): the range of dates is bounded by
        # glance.clock_tolerance, as every cursor's.
        parser.add_argument(flag, required=True, metavar="DATE", help=help_text)
    parser.add_argument(
        "--partner", type=int, metavar="ID", help="only this configured partner (default: all)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count the pages and sessions of the range; produce nothing, write no state",
    )
    parser.add_argument(
        "--state",
        type=Path,
        metavar="PATH",
        help=f"the backfill's own state file (default: state.path with {STATE_SUFFIX})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glance-poller",
        description="Poll the Glance Activity Service and publish session events to Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"glance-poller {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--config", metavar="FILE", help="TOML configuration (default: $POLLER_CONFIG)"
        )
        return sub

    run = with_config(commands.add_parser("run", help="run the daemon"))
    run.add_argument("--once", action="store_true", help="one tick of every stream, then exit")
    run.set_defaults(handler=_cmd_run)

    state = commands.add_parser("state", help="inspect or reset the state file")
    state_commands = state.add_subparsers(dest="state_command", required=True)
    with_config(state_commands.add_parser("show", help="print the state as JSON"))
    reset = with_config(state_commands.add_parser("reset", help="forget cursors and emitted ids"))
    reset.add_argument("--partner", type=int, help="only this partner")
    reset.add_argument("--stream", choices=STREAMS, help="only this stream")
    reset.add_argument(
        "--to",
        metavar="DATE",
        help="instead of forgetting, move the completed cursor to DATE (ISO; no zone = UTC)",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    state.set_defaults(handler=_cmd_state)

    tail = with_config(commands.add_parser("tail", help="print a topic's events as they arrive"))
    tail.add_argument("--topic", action="append", help="topic (repeatable; default: completed)")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.add_argument("--partner", type=int, help="only this partner's events")
    tail.add_argument("--max-events", type=int, help="stop after this many events")
    tail.add_argument(
        "--until-end",
        action="store_true",
        help="exit 0 once caught up: read up to the end offsets the partitions had at start",
    )
    tail.set_defaults(handler=_cmd_tail)

    check = with_config(
        commands.add_parser("check", help="verify config, credentials, Kafka and topics (0/1)")
    )
    check_arguments(check)
    check.set_defaults(handler=_cmd_check)

    backfill = with_config(
        commands.add_parser("backfill", help="replay a past range into the same topics")
    )
    backfill_arguments(backfill)
    backfill.set_defaults(handler=_cmd_backfill)

    emulator = commands.add_parser("emulator", help="run the local Glance Activity Service")
    emulator_cli.add_arguments(emulator)
    emulator.set_defaults(handler=_cmd_emulator)
    return parser


def _version() -> str:
    try:
        return version("glance-poller")
    except PackageNotFoundError:
        return "unknown"


def _tune_garbage_collector() -> None:
    """Collect cycles less often. Every page makes thousands of short-lived dicts, and the
    default thresholds spent a fifth to a quarter of the backfill's CPU re-scanning them
    (measured, bench/README.md); the code makes few reference cycles. What is loaded by now
    stays for the process's life, so it is frozen out of every later scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if stop_requested():
        return EXIT_OK
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        # Logging is not configured yet: the config is what would configure it.
        print(f"glance-poller: {exc}", file=sys.stderr)
        return exc.exit_code
    except StateError as exc:
        log.error(str(exc))
        return exc.exit_code
    except PollerError as exc:
        log.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        if not structlog.is_configured():
            # A failure before the configuration is read: structlog's default tracebacks
            # list every frame's local variables, the API key and passwords among them.
            logs.configure("info", "auto", stream=sys.stderr)
        log.exception("unexpected failure")
        return EXIT_FAILURE
    return code


def entry() -> None:
    _tune_garbage_collector()
    sys.exit(main())
