"""The daemon's loop: one task per partner and stream, ticks that never overlap, clean stop.

Per partner: the completed scan, the reconcile sweep, the started and the counts streams,
each on its own interval. The streams of one partner that touch its emitted ids take turns
(one lock), so a session is never in flight twice. One partner's failures stay its own: an
authentication fault halts that partner only; the process exits 3 when every partner has one.

Signal handlers only set an event. A tick in flight finishes its page, the producer is
flushed and the state closed; past ``shutdown_timeout`` what is left is cancelled (its
events are re-emitted with the same ids on the next start, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass, field

import aiohttp
import structlog

from poller.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    AuthenticationFailed,
    PublishFailed,
    RetriableUpstreamError,
    UnknownOperation,
)
from poller.events import EventBuilder, PiiPolicy
from poller.glance.client import GlanceClient
from poller.logs import get_logger
from poller.publisher import KafkaPublisher, Publisher
from poller.retry import OnRetry
from poller.settings import Config, Partner
from poller.state import StateStore
from poller.streams.base import Stream
from poller.streams.completed import CompletedStream
from poller.streams.counts import CountsStream
from poller.streams.feed import PartnerFeed
from poller.streams.reconcile import ReconcileSweep
from poller.streams.started import StartedStream

log = get_logger(__name__)
TRANSIENT = (RetriableUpstreamError, PublishFailed)


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
    auth_failed: bool = False


def _log_publish_retry() -> OnRetry:
    def note(error: BaseException, delay: float, attempt: int) -> None:
        # Retries are routine: debug level only; failing/recovered is logged by the loop.
        log.debug(
            "retrying", what="kafka", error=str(error), delay=round(delay, 2), attempt=attempt
        )

    return note


def _log_upstream_retry(operation: str, reason: str, delay: float) -> None:
    log.debug(
        "retrying", what="upstream", operation=operation, reason=reason, delay=round(delay, 2)
    )


class Service:
    def __init__(self, config: Config, *, publisher: Publisher | None = None) -> None:
        self._config = config
        self._publisher = publisher
        self._stopping = asyncio.Event()
        self._partners: list[PartnerRun] = []

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing the page in flight")
        self._stopping.set()
        for run in self._partners:
            run.halted.set()

    async def run(self, *, once: bool = False) -> int:
        settings = self._config.settings
        state = StateStore.open(settings.state.path)
        if not settings.glance.verify_tls:
            log.warning("TLS certificate verification is OFF for the Glance Activity Service")
        publisher = self._publisher or KafkaPublisher(
            settings.kafka, settings.retry, on_retry=_log_publish_retry()
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            connector = aiohttp.TCPConnector(ssl=settings.glance.verify_tls)
            async with aiohttp.ClientSession(connector=connector) as http:
                self._partners = [
                    self._partner_run(http, p, publisher, state) for p in self._config.partners
                ]
                log.info(
                    "glance-poller started",
                    partners=[p.id for p in self._config.partners],
                    streams=sorted({s.name for r in self._partners for s in r.streams}),
                    state=str(settings.state.path),
                    once=once,
                )
                results = await self._run_all(once)
        finally:
            await publisher.stop(settings.service.shutdown_timeout)
            state.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._partners and all(run.auth_failed for run in self._partners):
            return EXIT_AUTH
        log.info("glance-poller stopped")
        if once and not all(results):
            return EXIT_FAILURE
        return EXIT_OK

    def _partner_run(
        self,
        http: aiohttp.ClientSession,
        partner: Partner,
        publisher: Publisher,
        state: StateStore,
    ) -> PartnerRun:
        settings = self._config.settings
        client = GlanceClient(
            http, settings.glance, partner, settings.retry, on_retry=_log_upstream_retry
        )
        salt = settings.events.pii_salt
        pii = PiiPolicy(settings.events.pii, salt.get_secret_value() if salt else None)
        builder = EventBuilder(partner.id, settings.topics, pii)
        feed = PartnerFeed(partner.id, builder, publisher, state)
        feed.started_enabled = settings.started.enabled
        run = PartnerRun(partner, client, feed)
        run.streams.append(
            CompletedStream(client, feed, state, settings.glance, settings.completed, run.halted)
        )
        if settings.reconcile.enabled:
            run.streams.append(
                ReconcileSweep(
                    client,
                    feed,
                    state,
                    settings.glance,
                    settings.completed,
                    settings.reconcile,
                    run.halted,
                )
            )
        if settings.started.enabled:
            run.streams.append(
                StartedStream(
                    client,
                    feed,
                    settings.glance,
                    settings.started,
                    settings.reconcile,
                    run.halted,
                )
            )
        if settings.counts.enabled:
            run.streams.append(CountsStream(client, builder, publisher, settings.counts))
        return run

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
            _, late = await asyncio.wait(
                pending, timeout=self._config.settings.service.shutdown_timeout
            )
            for task in late:
                log.warning("shutdown deadline reached; abandoning a tick in flight")
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        stop_waiter.cancel()
        results: list[bool] = []
        for task in tasks:
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
        except AuthenticationFailed as exc:
            log.error(str(exc))
            run.auth_failed = True
            run.halted.set()
            return [False]
        except TRANSIENT as exc:
            # The streams retry on their own schedule; failing/recovered is logged there.
            log.debug("first call failed", error=str(exc))
        await self._check_started_operation(run)
        loops = [self._loop(run, stream, once) for stream in run.streams]
        return list(await asyncio.gather(*loops))

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

    @staticmethod
    def _disable_started(run: PartnerRun, operation: str) -> None:
        run.feed.started_enabled = False
        run.streams = [s for s in run.streams if s.name != "started"]
        log.warning(
            "the service has no web method for open sessions; the started stream is off, "
            "the others keep running",
            operation=operation,
        )

    async def _loop(self, run: PartnerRun, stream: Stream, once: bool) -> bool:
        """Tick, then wait out the rest of the interval; returns whether the last tick worked."""
        structlog.contextvars.bind_contextvars(partner=stream.partner_id, stream=stream.name)
        failing = False
        succeeded = False
        while not run.halted.is_set():
            started = time.monotonic()
            try:
                if stream.uses_state:
                    async with run.state_lock:
                        result = await stream.tick()
                else:
                    result = await stream.tick()
            except AuthenticationFailed as exc:
                if not run.auth_failed:
                    log.error(str(exc))
                run.auth_failed = True
                run.halted.set()
                return False
            except UnknownOperation as exc:
                if stream.name == "started":
                    self._disable_started(run, exc.operation)
                    return True
                log.error(f"{exc}: this stream stops", operation=exc.operation)
                return False
            except TRANSIENT as exc:
                succeeded = False
                if not failing:
                    log.warning("tick failed; will retry next tick", error=str(exc))
                failing = True
            else:
                succeeded = True
                if failing:
                    log.info("recovered")
                failing = False
                log.info("tick", seconds=round(time.monotonic() - started, 3), **result.as_log())
                if result.behind and not once:
                    continue
            if once:
                break
            if await self._wait(run, stream.interval - (time.monotonic() - started)):
                break
        return succeeded

    @staticmethod
    async def _wait(run: PartnerRun, seconds: float) -> bool:
        """Sleep unless halted first; returns whether the partner was halted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.halted.wait(), max(0.0, seconds))
        return run.halted.is_set()
