"""``glance-poller emulator`` (and ``python -m poller.emulator``): run the emulator as a server.

It serves the four operations and the admin API on one port, logs one line per request to
stderr, and stops cleanly on SIGTERM or SIGINT. With ``--port 0`` it picks a free port and,
with ``--port-file``, writes it there once listening, for test harnesses. With ``--tls-cert``
and ``--tls-key`` it serves HTTPS instead of HTTP (the admin API too), for testing how a client
handles the service's certificate.

For benchmarks, ``--latency``, ``--latency-per-record`` and ``--max-concurrent`` give it the
cost and the limits of a service across the internet (see ``behaviour.py``); the admin API
changes them at run time (``POST /admin/service``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from datetime import datetime
from pathlib import Path

from poller.emulator.behaviour import BehaviourError, ServiceBehaviour, parse_duration
from poller.emulator.clock import EmulatorClock
from poller.emulator.dataset import DatasetError, load_dataset
from poller.emulator.dates import DateFormatError, parse_request_date
from poller.emulator.faults import ALL_KINDS, DEFAULT_RATE_KINDS, FaultRate, FaultSpecError
from poller.emulator.state import DEFAULT_PARTNERS, EmulatorState
from poller.emulator.traffic import TrafficProfile

logger = logging.getLogger("poller.emulator")

EXIT_OK = 0
EXIT_CANNOT_SERVE = 1
EXIT_BAD_ARGUMENTS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument(
        "--partner",
        action="append",
        type=_partner,
        metavar="ID:APIKEY",
        help="a partner and its API key (repeatable; default 12345:demo-api-key)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of all generated data")
    parser.add_argument(
        "--dataset",
        action="append",
        type=Path,
        metavar="FILE",
        help="load a data set in API format into the first partner (repeatable)",
    )
    parser.add_argument(
        "--traffic-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="live sessions starting per minute of emulated time, per partner (0: none)",
    )
    parser.add_argument(
        "--backlog-hours",
        type=float,
        default=0.0,
        metavar="H",
        help="with live traffic, also the sessions that started in the last H hours",
    )
    parser.add_argument(
        "--max-duration",
        type=int,
        default=TrafficProfile().max_duration,
        metavar="SECONDS",
        help="longest generated session",
    )
    parser.add_argument(
        "--clock-start",
        type=_instant,
        metavar="ISO",
        help="the emulator clock's starting instant (default: now)",
    )
    parser.add_argument(
        "--clock-speed",
        type=float,
        default=1.0,
        metavar="X",
        help="emulated seconds per real second (0 freezes the clock)",
    )
    parser.add_argument(
        "--date-format",
        choices=("iso", "ms"),
        default="iso",
        help=r"record dates as ISO 8601 or as \/Date(ms)\/",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a call gets a fault",
    )
    parser.add_argument(
        "--fault-kinds",
        type=_kinds,
        metavar="K1,K2",
        help=f"faults drawn at --fault-rate (default {','.join(DEFAULT_RATE_KINDS)})",
    )
    parser.add_argument(
        "--latency",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="added to every answer of the service, e.g. 400ms (default 0; "
        "throttling, redirects and resets answer at once)",
    )
    parser.add_argument(
        "--latency-per-record",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="added per record served, e.g. 0.1ms (default 0)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="requests of one partner answered at once; more are refused with 429/503 and "
        "Retry-After (default 0: no limit)",
    )
    parser.add_argument(
        "--throttle-503-share",
        type=float,
        default=0.0,
        metavar="P",
        help="of the refusals for concurrency, the share answered 503 instead of 429, "
        "drawn from --seed (default 0: all 429)",
    )
    parser.add_argument(
        "--throttle-retry-after",
        type=_duration,
        default=1.0,
        metavar="DURATION",
        help="the Retry-After of those refusals (default 1s)",
    )
    parser.add_argument(
        "--port-file", type=Path, metavar="PATH", help="write the bound port here once listening"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="serve HTTPS with this certificate (chain) in PEM; needs --tls-key",
    )
    parser.add_argument(
        "--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert, in PEM"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="request lines are logged at INFO",
    )
    parser.epilog = (
        "At run time the admin API, on the same port, changes what these set: "
        "POST /admin/service {latency, latencyPerRecord, maxConcurrent, throttle503Share, "
        "retryAfter}, POST /admin/faults {calls, rate} (fault kinds: "
        + ", ".join(sorted(ALL_KINDS))
        + "), POST /admin/clock {set, advance, speed}, POST /admin/live {rate}; "
        "GET /admin/stats counts calls per operation and, per partner, the requests refused "
        "for concurrency and the peak of concurrent requests."
    )
    # argparse has no check across options: run() reports a lone --tls-cert or --tls-key
    # through the parser that read it, as a usage error (exit 2) like any other.
    parser.set_defaults(emulator_parser=parser)


def run(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    if (args.tls_cert is None) != (args.tls_key is None):
        message = "--tls-cert and --tls-key go together: give both or neither"
        parser = getattr(args, "emulator_parser", None)
        if isinstance(parser, argparse.ArgumentParser):
            parser.error(message)  # usage and message on stderr, exit 2
        logger.error("%s", message)
        return EXIT_BAD_ARGUMENTS
    try:
        ssl_context = tls_context(args.tls_cert, args.tls_key)
    except OSError as exc:  # ssl.SSLError is an OSError too
        logger.error("cannot use --tls-cert/--tls-key: %s", exc)
        return EXIT_BAD_ARGUMENTS
    try:
        state = build_state(args)
    except (ValueError, DatasetError) as exc:
        logger.error("emulator: %s", exc)
        return EXIT_BAD_ARGUMENTS
    try:
        asyncio.run(serve(state, args.host, args.port, args.port_file, ssl_context=ssl_context))
    except OSError as exc:
        logger.error("emulator: cannot listen on %s:%s: %s", args.host, args.port, exc)
        return EXIT_CANNOT_SERVE
    return EXIT_OK


def build_state(args: argparse.Namespace) -> EmulatorState:
    """The emulator the arguments describe (data loaded, traffic and faults set up)."""
    partners = dict(args.partner) if args.partner else dict(DEFAULT_PARTNERS)
    try:
        behaviour = ServiceBehaviour(
            latency=args.latency,
            latency_per_record=args.latency_per_record,
            max_concurrent=args.max_concurrent,
            throttle_503_share=args.throttle_503_share,
            retry_after=args.throttle_retry_after,
            seed=args.seed,
        )
    except BehaviourError as exc:
        raise ValueError(str(exc).replace("_", "-")) from exc
    state = EmulatorState(
        clock=EmulatorClock(args.clock_start, args.clock_speed),
        partners=partners,
        date_format=args.date_format,
        seed=args.seed,
        profile=TrafficProfile(max_duration=args.max_duration),
        behaviour=behaviour,
    )
    first_partner = next(iter(partners))
    for path in args.dataset or []:
        sessions = load_dataset(path, first_partner, state.store.allocate_id)
        state.store.add(first_partner, sessions)
        logger.info(
            "loaded %d sessions from %s into partner %d", len(sessions), path, first_partner
        )
    if args.traffic_rate < 0 or args.backlog_hours < 0:
        raise ValueError("--traffic-rate and --backlog-hours cannot be negative")
    state.start_live_traffic(args.traffic_rate, args.backlog_hours)
    if args.fault_rate > 0:
        try:
            state.faults.rate = FaultRate(
                p=args.fault_rate,
                kinds=tuple(args.fault_kinds or DEFAULT_RATE_KINDS),
                seed=args.seed,
            )
        except FaultSpecError as exc:
            raise ValueError(f"--fault-rate: {exc}") from exc
    return state


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server side of HTTPS for ``--tls-cert``/``--tls-key``; None (plain HTTP) without."""
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context


async def serve(
    state: EmulatorState,
    host: str,
    port: int,
    port_file: Path | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; HTTPS with ``ssl_context``, else plain HTTP."""
    # Imported here: every glance-poller command builds this module's arguments, and only
    # this one needs the server.
    from aiohttp import web

    from poller.emulator.app import create_app

    made = state.catch_up()  # the live backlog, before the first client asks
    if made:
        logger.info("live traffic: %d sessions in the backlog", made)
    runner = web.AppRunner(
        create_app(state), access_log=None, handler_cancellation=True, shutdown_timeout=5.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound_port = runner.addresses[0][1]
        if port_file is not None:
            _write_atomically(port_file, f"{bound_port}\n")
        logger.info(
            "listening on %s://%s:%d (partners %s, clock %s at speed %g)",
            "https" if ssl_context is not None else "http",
            host,
            bound_port,
            ",".join(map(str, state.partners)),
            state.clock.now().isoformat(timespec="seconds"),
            state.clock.speed,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping")
    finally:
        await runner.cleanup()
        if port_file is not None:
            _remove_quietly(port_file)


def _write_atomically(path: Path, text: str) -> None:
    # A harness polling for the file must never read it half-written.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _configure_logging(level: str) -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s emulator: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


def _partner(text: str) -> tuple[int, str]:
    partner_id, sep, api_key = text.partition(":")
    if not sep or not api_key or not partner_id.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected ID:APIKEY, got {text!r}")
    return int(partner_id), api_key


def _instant(text: str) -> datetime:
    try:
        return parse_request_date(text)
    except DateFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _duration(text: str) -> float:
    try:
        return parse_duration(text, "a duration")
    except BehaviourError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in ALL_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {unknown}; known: {','.join(sorted(ALL_KINDS))}"
        )
    return kinds
