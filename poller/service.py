"""The daemon's loop: one task per partner and stream, ticks that never overlap, clean stop.

Per partner: the completed scan, the reconcile sweep, the started and the counts streams,
each on its own interval. The streams of one partner that touch its emitted ids take turns
(one lock), so a session is never in flight twice. One partner's failures stay its own: an
authentication fault halts that partner only; the process exits 3 when every partner has one.

Signal handlers only set an event. A tick in flight finishes its page, the producer is
flushed and the state closed, all within ``shutdown_timeout``; past it what is left is
cancelled (its events are re-emitted with the same ids on the next start, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp
import structlog

from poller import logs, metrics
from poller.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    ConfigError,
    ConfigProblem,
    CursorInFuture,
    KafkaAuthFailed,
    PollerError,
    PublishFailed,
    RetriableUpstreamError,
    StateError,
    StateUnwritable,
    UnknownOperation,
    UpstreamMisconfigured,
)
from poller.glance.client import GlanceClient, upstream_connector
from poller.health import Health
from poller.launch import stop_requested
from poller.logs import get_logger
from poller.publisher import KafkaPublisher
from poller.server import OperatorServer
from poller.settings import Config, Partner
from poller.state import StateStore
from poller.streams.base import Stream
from poller.streams.completed import CompletedStream
from poller.streams.counts import CountsStream
from poller.streams.feed import PartnerFeed
from poller.streams.names import COMPLETED, STARTED
from poller.streams.open_sessions import OpenSessions
from poller.streams.reconcile import ReconcileSweep
from poller.streams.started import StartedStream
from poller.wiring import wire_partner

log = get_logger(__name__)
# Linux's default ceiling for a process's descriptors (fs.nr_open), for an unlimited hard limit.
_MOST_OPEN_FILES = 1 << 20
TRANSIENT = (RetriableUpstreamError, PublishFailed, CursorInFuture, StateUnwritable)


@dataclass
class PartnerRun:
    """One partner's streams and what they share."""

    partner: Partner
    client: GlanceClient
    feed: PartnerFeed
    streams: list[Stream] = field(default_factory=list)
    # Stops this partner only (authentication fault); the global stop sets it too.
    halted: asyncio.Event = field(default_factory=asyncio.Event)
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The fatal error that halted this partner (bad credentials, a redirecting base_url).
    fatal: PollerError | None = None
    open_sessions: OpenSessions | None = None


# Quiet streams (upstream listed nothing) wake on these marks (seconds of the loop's clock),
# so the process wakes once for the quiet partners due near a mark instead of once each: on
# this project's 2-core VM, sleeping and waking costs about as much CPU as an HTTP call
# does, and it cut 300 idle partners' CPU by a third (bench/README.md). A stream with traffic
# keeps its exact phase: grouped, its pages would arrive and be built in bursts (p99 +0.5 s).
TICK_MARK = 0.25
# The streams that poll every few seconds: a tick of theirs that read nothing is logged at
# debug. Three hundred quiet partners would otherwise write 60 lines a second saying nothing
# (gigabytes a day, and a tenth of a quiet daemon's CPU); ticks_total counts every tick, and
# the sweep's and the counts' ticks, a few an hour, are always logged.
POLLS = frozenset({COMPLETED, STARTED})
# The longest the broker watcher's question to Kafka may take (seconds).
PING_LIMIT = 5.0


def on_the_mark(now: float, wait: float) -> float:
    """``wait`` stretched to the next shared mark: less than one mark longer. The stream's
    grid is not moved, so the stretch never accumulates."""
    return math.ceil((now + wait) / TICK_MARK) * TICK_MARK - now


def until_next_tick(origin: float, started: float, now: float, interval: float) -> float:
    """Seconds until a stream's next tick: the next point of its own grid, its first tick
    (``origin``) plus whole intervals. Partners keep the spread ``start_jitter`` gave them
    without the interval growing (a session's wait for the scan that finds it is one interval
    at most), and after something held them all (Kafka away) each returns to its own phase
    rather than all calling upstream at every interval. A tick that took the whole interval
    (``started`` to ``now``) is followed at once."""
    if now - started >= interval:
        return 0.0
    return interval - (now - origin) % interval


def raise_open_files_limit() -> None:
    """Every connection holds a descriptor: upstream's per partner, Kafka's, and each one on
    the operator's port, which anyone who reaches it can open and leave half-sent. Under the
    usual soft limit (1,024, systemd's) a thousand of those left no descriptor for upstream
    calls. The hard limit is the operator's choice; the soft one is only a default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _MOST_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


class Service:
    def __init__(self, config: Config) -> None:
        self._config = config
        settings = config.settings
        self._stopping = asyncio.Event()
        self._deadline: float | None = None
        self._partners: list[PartnerRun] = []
        # Fatal for the whole process (Kafka refused the credentials).
        self._fatal: PollerError | None = None
        self.health = Health(
            stale_after_intervals=settings.health.stale_after_intervals,
            failed_ticks=settings.health.failed_ticks,
            broker_max_silence=settings.health.broker_max_silence,
        )
        self.server_port: int | None = None

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing the page in flight")
            self._deadline = time.monotonic() + self._config.settings.service.shutdown_timeout
            # The lines still queued for a stalled log output wait no longer than the stop.
            logs.finish_by(self._deadline)
        self._stopping.set()
        self.health.running = False
        for run in self._partners:
            run.halted.set()

    def _time_left(self) -> float:
        if self._deadline is None:
            return self._config.settings.service.shutdown_timeout
        return max(0.5, self._deadline - time.monotonic())

    async def run(self, *, once: bool = False) -> int:
        settings = self._config.settings
        raise_open_files_limit()
        state = StateStore.open(settings.state.path)
        self.health.watch_state(lambda: state.write_problem)
        if not settings.glance.verify_tls and settings.glance.base_url.startswith("https:"):
            log.warning("TLS certificate verification is OFF for the Glance Activity Service")
        publisher = KafkaPublisher(
            settings.kafka,
            settings.retry,
            stopping=self._stopping,
            health=self.health,
            retry_forever=not once,
            replace_after=settings.health.broker_max_silence,
        )
        server = None
        if settings.server.enabled and not once:
            server = OperatorServer(self.health, settings.server.host, settings.server.port)
            try:
                await server.start()
            except OSError as exc:
                state.close()
                where = f"{settings.server.host}:{settings.server.port}"
                raise ConfigError(
                    [ConfigProblem("server.port", f"cannot listen on {where}: {exc.strerror}")]
                ) from None
            self.server_port = server.port
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        if stop_requested():  # a SIGTERM while starting: stop as if it came now
            self.request_stop()
        watcher: asyncio.Task[None] | None = None
        watch_ended = asyncio.Event()
        try:
            connector = upstream_connector(settings.glance, len(self._config.partners))
            async with aiohttp.ClientSession(connector=connector) as http:
                self._partners = [
                    self._partner_run(http, p, publisher, state) for p in self._config.partners
                ]
                log.info(
                    "glance-poller started",
                    partners=[p.id for p in self._config.partners],
                    streams=sorted({s.name for r in self._partners for s in r.streams}),
                    state=str(settings.state.path),
                    metrics_port=self.server_port,
                    once=once,
                )
                self.health.running = True
                if not once:
                    watcher = asyncio.create_task(self._watch_broker(publisher, watch_ended))
                results = await self._run_all(once)
        finally:
            self.health.running = False
            # Ended before the publisher stops, and not by cancelling it: a producer cancelled
            # while it connects leaves its connections open.
            watch_ended.set()
            if watcher is not None:
                await asyncio.wait({watcher}, timeout=min(PING_LIMIT + 1.0, self._time_left()))
            # Cancelled again until it ends: Python 3.11's wait_for can swallow a cancellation
            # that lands as its inner call completes, and the watcher would then run on.
            while watcher is not None and not watcher.done():
                watcher.cancel()
                await asyncio.wait({watcher}, timeout=1.0)
            await publisher.stop(self._time_left())
            state.close()
            if server is not None:
                await server.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
                # Already stopping: a further signal must not kill the last steps.
                signal.signal(sig, signal.SIG_IGN)
        if self._fatal is not None:
            raise self._fatal
        if self._partners and all(run.fatal is not None for run in self._partners):
            codes = {run.fatal.exit_code for run in self._partners if run.fatal is not None}
            return codes.pop() if len(codes) == 1 else EXIT_AUTH
        log.info("glance-poller stopped")
        if once and not all(results):
            return EXIT_FAILURE
        return EXIT_OK

    def _partner_run(
        self,
        http: aiohttp.ClientSession,
        partner: Partner,
        publisher: KafkaPublisher,
        state: StateStore,
    ) -> PartnerRun:
        settings = self._config.settings
        scanner = wire_partner(
            http,
            settings,
            partner,
            publisher,
            state,
            asyncio.Event(),  # this partner's halt: its own fatal error, or the global stop
            started_enabled=settings.started.enabled,
        )
        run = PartnerRun(partner, scanner.client, scanner.feed, halted=scanner.stopping)
        # What the started stream saw open narrows how far the fast scan must look back,
        # and says which sessions just ended.
        open_sessions = None
        if settings.started.enabled:
            freshness = timedelta(seconds=max(60.0, 3 * settings.started.interval))
            open_sessions = OpenSessions(freshness)
        run.open_sessions = open_sessions
        run.streams.append(
            CompletedStream(
                scanner,
                settings.glance,
                settings.completed,
                open_sessions,
                # Asked for the oldest open session even with the started stream off.
                open_operation=settings.started.operation,
            )
        )
        if settings.reconcile.enabled:
            run.streams.append(
                ReconcileSweep(scanner, settings.glance, settings.completed, settings.reconcile)
            )
        if settings.started.enabled:
            run.streams.append(
                StartedStream(
                    scanner, settings.glance, settings.started, settings.reconcile, open_sessions
                )
            )
        if settings.counts.enabled:
            run.streams.append(
                CountsStream(scanner.client, scanner.feed.builder, publisher, settings.counts)
            )
        for stream in run.streams:
            self.health.watch(partner.id, stream.name, stream.interval)
        return run

    async def _watch_broker(self, publisher: KafkaPublisher, ended: asyncio.Event) -> None:
        """When no batch was acknowledged lately, ask Kafka for metadata: /readyz must
        notice a broker that went away even while there is nothing to send. Ends when
        ``ended`` is set, after the question in flight (at most PING_LIMIT seconds)."""
        every = self._config.settings.health.broker_check_interval
        while not ended.is_set():
            quiet = self.health.broker_quiet_for()
            if quiet is None or quiet >= every:
                try:
                    await publisher.ping(min(every, PING_LIMIT))
                except KafkaAuthFailed as exc:
                    self._fatal = exc
                    self.request_stop()
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), every)

    async def _run_all(self, once: bool) -> list[bool]:
        jitter = 0.0 if once else self._config.settings.service.start_jitter
        tasks = [
            asyncio.create_task(self._run_partner(run, once, random.uniform(0, jitter) if i else 0))
            for i, run in enumerate(self._partners)
        ]
        stop_waiter = asyncio.create_task(self._stopping.wait())
        pending: set[asyncio.Task[list[bool]]] = set(tasks)
        while pending and not self._stopping.is_set():
            done, _ = await asyncio.wait(
                {*pending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            pending.difference_update(done)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._time_left())
            for task in late:
                log.warning("shutdown deadline reached; abandoning a tick in flight")
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        stop_waiter.cancel()
        results: list[bool] = []
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.error("a partner's run crashed", exc_info=error)
            ok = task.done() and not task.cancelled() and task.exception() is None
            results.extend(task.result() if ok else [False])
        return results

    async def _run_partner(self, run: PartnerRun, once: bool, delay: float) -> list[bool]:
        """Check the credentials with one call, then run every stream of the partner."""
        structlog.contextvars.bind_contextvars(partner=run.partner.id)
        if delay and await self._wait(run, delay):
            return [False]
        try:
            await run.client.server_now()
        except (AuthenticationFailed, UpstreamMisconfigured) as exc:
            self._reject(run, exc)
            return [False]
        except TRANSIENT as exc:
            # The streams retry on their own schedule; failing/recovered is logged there.
            log.debug("first call failed", error=str(exc))
        await self._check_started_operation(run)
        loops = [self._loop(run, stream, once) for stream in run.streams]
        return list(await asyncio.gather(*loops))

    def _reject(self, run: PartnerRun, exc: AuthenticationFailed | UpstreamMisconfigured) -> None:
        if run.fatal is None:
            log.error(str(exc))
        run.fatal = exc
        run.halted.set()
        reason = (
            "credentials rejected"
            if isinstance(exc, AuthenticationFailed)
            else "the service redirects: fix glance.base_url"
        )
        self.health.credentials_rejected(run.partner.id, reason)

    async def _check_started_operation(self, run: PartnerRun) -> None:
        """Before anything is emitted: without the open-sessions operation, no started events
        at all (not even those published just before a completion)."""
        started = next((s for s in run.streams if isinstance(s, StartedStream)), None)
        if started is None:
            return
        try:
            available = await started.available()
        except TRANSIENT:
            return  # unknown yet: the stream's own ticks will find out
        if not available:
            self._disable_started(run, self._config.settings.started.operation)

    def _disable_started(self, run: PartnerRun, operation: str) -> None:
        run.feed.started_enabled = False
        if run.open_sessions is not None:
            run.open_sessions.forget()
        run.streams = [s for s in run.streams if s.name != STARTED]
        self.health.unwatch(run.partner.id, STARTED)
        log.warning(
            "the service has no web method for open sessions; the started stream is off, "
            "the others keep running",
            operation=operation,
        )

    async def _loop(self, run: PartnerRun, stream: Stream, once: bool) -> bool:
        """Tick, then wait out the rest of the interval; returns whether the last tick worked."""
        structlog.contextvars.bind_contextvars(partner=stream.partner_id, stream=stream.name)
        labels = (str(stream.partner_id), stream.name)
        failing = False
        succeeded = False
        origin = time.monotonic()
        while not run.halted.is_set():
            started = time.monotonic()
            quiet = False
            try:
                if stream.uses_state:
                    async with run.state_lock:
                        result = await stream.tick()
                else:
                    result = await stream.tick()
            except (AuthenticationFailed, UpstreamMisconfigured) as exc:
                self._reject(run, exc)
                return False
            except (KafkaAuthFailed, StateError) as exc:
                # Every partner's events go through the one producer, and every partner's
                # progress into the one state file: the process stops.
                self._fatal = exc
                self.request_stop()
                return False
            except UnknownOperation as exc:
                if stream.name == STARTED:
                    self._disable_started(run, exc.operation)
                    return True
                log.error(f"{exc}: this stream stops", operation=exc.operation)
                self.health.tick_failed(stream.partner_id, stream.name)
                return False
            except TRANSIENT as exc:
                succeeded = False
                metrics.TICKS.labels(*labels, "failed").inc()
                self.health.tick_failed(stream.partner_id, stream.name)
                if self._stopping.is_set():
                    break
                if not failing:
                    log.warning("tick failed; will retry next tick", error=str(exc))
                failing = True
            except Exception:
                # A bug, not weather: loud every time, and the stream keeps its schedule
                # (state is committed per page, so the next tick starts from firm ground).
                succeeded = False
                metrics.TICKS.labels(*labels, "crashed").inc()
                self.health.tick_failed(stream.partner_id, stream.name)
                log.exception("tick crashed; will retry next tick")
                failing = True
            else:
                if run.fatal is not None:
                    # Another stream of this partner met its rejection: this tick was cut
                    # short, and says nothing about whether the partner works.
                    return False
                succeeded = True
                metrics.TICKS.labels(*labels, "ok").inc()
                self.health.tick_succeeded(stream.partner_id, stream.name)
                if failing:
                    log.info("recovered")
                failing = False
                tick_log = log.debug if result.quiet and stream.name in POLLS else log.info
                tick_log("tick", seconds=round(time.monotonic() - started, 3), **result.as_log())
                if result.behind and not once:
                    continue
                quiet = result.quiet
            if once:
                break
            now = time.monotonic()
            wait = until_next_tick(origin, started, now, stream.interval)
            if quiet:
                wait = on_the_mark(now, wait)
            if await self._wait(run, wait):
                break
        return succeeded

    @staticmethod
    async def _wait(run: PartnerRun, seconds: float) -> bool:
        """Sleep unless halted first; returns whether the partner was halted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.halted.wait(), max(0.0, seconds))
        return run.halted.is_set()
