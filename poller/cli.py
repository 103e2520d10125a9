"""The ``glance-poller`` command: run, emulator, state, tail."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson

from poller import logs
from poller.emulator import cli as emulator_cli
from poller.errors import EXIT_FAILURE, EXIT_OK, ConfigError, PollerError, StateError
from poller.settings import Config, load_config

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
    from poller.state import StateStore

    config = _load(args, need_credentials=False)
    store = StateStore.open(config.settings.state.path)
    try:
        if args.state_command == "show":
            print(orjson.dumps(store.snapshot(), option=orjson.OPT_INDENT_2).decode())
            return EXIT_OK
        scope = f"partner {args.partner}" if args.partner else "every partner"
        scope += f", stream {args.stream}" if args.stream else ", every stream"
        if not args.yes:
            if not sys.stdin.isatty():
                print(
                    "refusing to reset without --yes (no terminal to confirm on)", file=sys.stderr
                )
                return EXIT_FAILURE
            answer = input(f"Forget the cursors and emitted ids of {scope}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return EXIT_OK
        removed = store.reset(args.partner, args.stream)
        print(f"reset {removed} cursor(s) of {scope}")
        return EXIT_OK
    finally:
        store.close()


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
        )
    )


def _cmd_emulator(args: argparse.Namespace) -> int:
    return emulator_cli.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glance-poller",
        description="Poll the Glance Activity Service and publish session events to Kafka.",
    )
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
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    state.set_defaults(handler=_cmd_state)

    tail = with_config(commands.add_parser("tail", help="print a topic's events as they arrive"))
    tail.add_argument("--topic", action="append", help="topic (repeatable; default: completed)")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.add_argument("--partner", type=int, help="only this partner's events")
    tail.add_argument("--max-events", type=int, help="stop after this many events")
    tail.set_defaults(handler=_cmd_tail)

    emulator = commands.add_parser("emulator", help="run the local Glance Activity Service")
    emulator_cli.add_arguments(emulator)
    emulator.set_defaults(handler=_cmd_emulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        log.exception("unexpected failure")
        return EXIT_FAILURE
    return code


def entry() -> None:
    sys.exit(main())
