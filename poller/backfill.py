"""``glance-poller backfill``: replay a past range into the same topics, resumably.

The range is read by the one scan (``streams/scan.py``), exactly as the live completed stream
reads: the same events (deterministic ``ce_id``), the same topics, bad records to the same
dead-letter topic, each page committed only after all of its acknowledgements. What is the
command's own lives here: the range and its cursor, progress, resume, dry run.

The backfill keeps its progress in its own state file (by default beside the live one,
``<state.path without its suffix>.backfill.sqlite3``): it runs while the daemon holds the live
file, and can never move the live cursor. Its cursor is named after the range, so the same
command resumes and a different range starts afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import structlog

from poller.backfill_progress import Progress, progress_for_stderr
from poller.backfill_windows import RangeWindows, cut
from poller.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    ConfigError,
    ConfigProblem,
    PollerError,
    PublishFailed,
    RetriableUpstreamError,
    StateUnwritable,
    UpstreamMisconfigured,
)
from poller.glance.client import upstream_connector
from poller.glance.dates import to_request
from poller.glance.records import total_count
from poller.health import Health
from poller.launch import stop_requested
from poller.limiter import ConcurrencyLimiter, HeldPages
from poller.logs import get_logger
from poller.publisher import DiscardingPublisher, KafkaPublisher, Publisher
from poller.settings import Config, Partner
from poller.state import StateStore, parse_cli_date
from poller.streams.names import COMPLETED
from poller.streams.scan import Scanner
from poller.window import Window, split_window
from poller.wiring import wire_partner

log = get_logger(__name__)
RESUME_HINT = "run the same command to resume"
# The failures a backfill stops at, keeping what was acknowledged and committed.
_WHY_STOPPED: dict[type[PollerError], str] = {
    RetriableUpstreamError: "the Glance Activity Service kept failing",
    PublishFailed: "Kafka did not acknowledge a page",
    StateUnwritable: "the state file cannot be written",
}


def cursor_stream(span: Window) -> str:
    """The backfill cursor's name: the same range resumes, another starts afresh."""
    return f"backfill:{to_request(span.start)}/{to_request(span.end)}"


def _instant(
    flag: str, text: str, config: Config, problems: list[ConfigProblem]
) -> datetime | None:
    """``--since`` or ``--until``: an ISO date or date-time (no zone: UTC), whole seconds,
    within the dates a cursor may hold (``parse_cli_date``)."""
    try:
        moment = parse_cli_date(text, config.settings.glance.clock_tolerance)
    except ValueError as exc:
        problems.append(ConfigProblem(flag, str(exc)))
        return None
    if moment.microsecond:
        problems.append(ConfigProblem(flag, f"whole seconds only: {text!r}"))
        return None
    return moment


def run(args: argparse.Namespace, config: Config) -> int:
    problems: list[ConfigProblem] = []
    since = _instant("--since", args.since, config, problems)
    span_end = _instant("--until", args.until, config, problems)
    if since is not None and span_end is not None and span_end <= since:
        problems.append(
            ConfigProblem("--until", f"must be after --since ({to_request(since)} given)")
        )
    partners = [p for p in config.partners if args.partner in (None, p.id)]
    if not partners:
        configured = ", ".join(str(p.id) for p in config.partners) or "none"
        problems.append(
            ConfigProblem(
                "--partner", f"partner {args.partner} is not configured (configured: {configured})"
            )
        )
    live = config.settings.state.path
    state_path: Path = args.state or live.with_suffix(".backfill.sqlite3")
    if state_path.resolve() == live.resolve():
        problems.append(
            ConfigProblem(
                "--state", f"{state_path} is the daemon's state file; give the backfill its own"
            )
        )
    if problems:
        raise ConfigError(problems)
    assert since is not None and span_end is not None
    span = Window(since, span_end)
    backfill = Backfill(config, partners, span, None if args.dry_run else state_path)
    return asyncio.run(backfill.main())


class Backfill:
    def __init__(
        self, config: Config, partners: list[Partner], span: Window, state_path: Path | None
    ) -> None:
        self._settings = config.settings
        self._partners = partners
        self._span = span
        self._stream = cursor_stream(span)
        self._state_path = state_path  # None: a dry run, no state and nothing produced
        self._stopping = asyncio.Event()
        self._progress: Progress = progress_for_stderr()
        self._range = {"since": to_request(span.start), "until": to_request(span.end)}

    async def main(self) -> int:
        """A first SIGINT/SIGTERM finishes the page in flight, a second abandons it (it is
        sent again, with the same ids, on resume); either way the exit code says 128+signal."""
        loop = asyncio.get_running_loop()
        work = asyncio.current_task()
        received: list[int] = []

        def on_signal(number: int) -> None:
            received.append(number)
            if len(received) == 1:
                log.info("stopping after the page in flight (signal again to abandon it)")
                self._stopping.set()
            elif len(received) == 2 and work is not None:
                work.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        if stop_requested():
            on_signal(signal.SIGTERM)
        try:
            code = await self._run()
        except asyncio.CancelledError:
            if len(received) < 2:
                raise
            if work is not None:
                work.uncancel()
            log.warning(
                f"interrupted; the page in flight was abandoned; {RESUME_HINT}", **self._range
            )
            code = EXIT_OK
        finally:
            self._progress.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return 128 + received[0] if received and code == EXIT_OK else code

    async def _run(self) -> int:
        settings = self._settings
        if not settings.glance.verify_tls and settings.glance.base_url.startswith("https:"):
            log.warning("TLS certificate verification is OFF for the Glance Activity Service")
        rejected = False
        async with contextlib.AsyncExitStack() as stack:
            state = stack.enter_context(self._state())
            publisher: Publisher = DiscardingPublisher()
            if self._state_path is not None:
                publisher = KafkaPublisher(
                    settings.kafka, settings.retry, stopping=self._stopping, health=Health(),
                    retry_forever=False,
                )  # fmt: skip
            stack.push_async_callback(publisher.stop, settings.service.shutdown_timeout)
            connector = upstream_connector(settings.glance, len(self._partners))
            http = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            for partner in self._partners:
                if self._stopping.is_set():
                    break
                wire = functools.partial(
                    wire_partner, http, settings, partner, publisher, state, self._stopping,
                    started_enabled=False,
                )  # fmt: skip
                with structlog.contextvars.bound_contextvars(partner=partner.id):
                    try:
                        await self._partner(partner, wire)
                    except (AuthenticationFailed, UpstreamMisconfigured) as exc:
                        log.error(str(exc))
                        rejected = True
                    except (RetriableUpstreamError, PublishFailed, StateUnwritable) as exc:
                        what = next(w for t, w in _WHY_STOPPED.items() if isinstance(exc, t))
                        log.error(
                            f"backfill stopped: {what}; what was acknowledged is kept, "
                            f"{RESUME_HINT}",
                            error=str(exc),
                            **self._range,
                        )
                        return EXIT_FAILURE
        return EXIT_AUTH if rejected else EXIT_OK

    @contextlib.contextmanager
    def _state(self) -> Iterator[StateStore]:
        """The backfill's own state file; a dry run's is a throw-away one."""
        with contextlib.ExitStack() as stack:
            path = self._state_path
            if path is None:
                path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "dry-run.sqlite3"
            state = StateStore.open(path)
            stack.callback(state.close)
            yield state

    async def _partner(self, partner: Partner, wire: Callable[..., Scanner]) -> None:
        span = self._span
        ceiling = self._settings.backfill.concurrency

        def changed(limit: int, why: str) -> None:
            log.info(f"backfill concurrency {'lowered' if why == 'throttled' else 'raised'}",
                     concurrency=limit, ceiling=ceiling, why=why)  # fmt: skip

        limiter = ConcurrencyLimiter(ceiling, on_change=changed)
        # The windows in flight share the room for pages built and awaiting Kafka: one each,
        # and one more for whichever is ready first (a single window keeps its two).
        scanner = wire(gate=limiter.slot, held=HeldPages(ceiling + 1))
        feed = scanner.feed
        plan = RangeWindows(scanner, self._stream, span)
        if plan.complete():
            log.info(
                "backfill already complete: nothing to do",
                state=str(self._state_path),
                **self._range,
            )
            return
        started = time.monotonic()
        client = scanner.client
        total = still_open = 0
        max_window = timedelta(seconds=self._settings.glance.max_window)
        for window in split_window(span, max_window):
            ended, still = await asyncio.gather(
                client.session_counts(window, status="C", shape=total_count),
                client.session_counts(window, status="A", shape=total_count),
            )
            total, still_open = total + ended, still_open + still
        now = await client.server_now()
        if span.end > now:
            raise ConfigError(
                [
                    ConfigProblem(
                        "--until",
                        f"{to_request(span.end)} is after the service's current time "
                        f"({to_request(now)}): a backfill replays the past, the daemon the present",
                    )
                ]
            )
        if still_open:
            log.warning(
                "sessions that started in the range are still open: they are not listed yet, "
                "so this backfill does not replay them",
                still_open=still_open,
            )
        page_size = self._settings.glance.page_size
        windows = cut(span, max_window, -(-total // page_size), ceiling)
        pending = plan.pending(windows)
        done = feed.state.count_emitted(feed.partner_id, COMPLETED, span)
        log.info(
            "backfill resuming" if plan.resumed else "backfill starting",
            windows=len(windows),
            concurrency=ceiling,
            sessions_upstream=total,
            already_done=done,
            state=str(self._state_path),
            **self._range,
        )
        with self._progress.logging():
            self._progress.start(partner.id, total, done)
            outcome = await plan.fetch(pending, ceiling, limiter, self._progress.advance)
            self._progress.close()
        if outcome.failure is not None:
            raise outcome.failure
        figures = {
            "pages": outcome.pages,
            **outcome.delivered.as_log(),
            "sessions_upstream": total,
            "concurrency": limiter.limit,
            "throttled": limiter.throttled,
            "seconds": round(time.monotonic() - started, 1),
        }
        if self._state_path is None:
            log.info(
                "backfill dry run: nothing was produced and no state was written",
                windows=len(windows),
                sessions=outcome.delivered.records,
                interrupted=not plan.complete(),
                **figures,
                **self._range,
            )
        elif plan.complete():
            log.info("backfill complete", **self._range, **figures)
        else:
            log.warning(
                f"interrupted; {RESUME_HINT}",
                windows=len(windows),
                windows_left=len(plan.pending(windows)),
                **self._range,
                **figures,
            )
