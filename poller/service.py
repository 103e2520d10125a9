"""The daemon's loop: one task per partner and stream, ticks that never overlap, clean stop.

Signal handlers only set an event. A tick in flight finishes its page, the producer is
flushed and the state closed; past ``shutdown_timeout`` whatever is left is cancelled
(its events are re-emitted with the same ids on the next start, never lost).
"""

from __future__ import annotations

import asyncio
import contextlib
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
)
from poller.events import EventBuilder, PiiPolicy
from poller.glance.client import GlanceClient
from poller.logs import get_logger
from poller.publisher import KafkaPublisher, Publisher
from poller.retry import OnRetry
from poller.settings import Config, Partner
from poller.state import StateStore
from poller.streams.completed import CompletedStream

log = get_logger(__name__)
TRANSIENT = (RetriableUpstreamError, PublishFailed)


@dataclass
class _Health:
    consecutive_failures: int = 0
    auth_failed: set[int] = field(default_factory=set)
    ticks_failed_once: int = 0


def _log_retry(kind: str) -> OnRetry:
    def note(error: BaseException, delay: float, attempt: int) -> None:
        # Retries are routine: debug level only; failing/recovered is logged by the loop.
        log.debug("retrying", what=kind, error=str(error), delay=round(delay, 2), attempt=attempt)

    return note


class Service:
    def __init__(self, config: Config, *, publisher: Publisher | None = None) -> None:
        self._config = config
        self._publisher = publisher
        self._stopping = asyncio.Event()
        self._health = _Health()

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: finishing the page in flight")
        self._stopping.set()

    async def run(self, *, once: bool = False) -> int:
        settings = self._config.settings
        state = StateStore.open(settings.state.path)
        if not settings.glance.verify_tls:
            log.warning("TLS certificate verification is OFF for the Glance Activity Service")
        publisher = self._publisher or KafkaPublisher(
            settings.kafka, settings.retry, on_retry=_log_retry_publish
        )
        connector = aiohttp.TCPConnector(ssl=settings.glance.verify_tls)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                streams = [
                    self._completed_stream(http, p, publisher, state) for p in self._config.partners
                ]
                log.info(
                    "glance-poller started",
                    partners=[p.id for p in self._config.partners],
                    state=str(settings.state.path),
                    once=once,
                )
                results = await self._run_streams(streams, once)
        finally:
            await publisher.stop(settings.service.shutdown_timeout)
            state.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if self._health.auth_failed and self._health.auth_failed >= {
            p.id for p in self._config.partners
        }:
            return EXIT_AUTH
        if once and not all(results):
            return EXIT_FAILURE
        log.info("glance-poller stopped")
        return EXIT_OK

    def _completed_stream(
        self,
        http: aiohttp.ClientSession,
        partner: Partner,
        publisher: Publisher,
        state: StateStore,
    ) -> CompletedStream:
        settings = self._config.settings
        client = GlanceClient(
            http, settings.glance, partner, settings.retry, on_retry=_log_retry_upstream
        )
        salt = settings.events.pii_salt
        pii = PiiPolicy(settings.events.pii, salt.get_secret_value() if salt else None)
        builder = EventBuilder(partner.id, settings.topics, pii)
        return CompletedStream(
            client, builder, publisher, state, settings.glance, settings.completed, self._stopping
        )

    async def _run_streams(self, streams: list[CompletedStream], once: bool) -> list[bool]:
        tasks = [asyncio.create_task(self._loop(s, once)) for s in streams]
        stop_waiter = asyncio.create_task(self._stopping.wait())
        pending: set[asyncio.Task[bool]] = set(tasks)
        while pending and not self._stopping.is_set():
            _, pending = await asyncio.wait(
                {*pending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(stop_waiter)
        if pending:
            _, late = await asyncio.wait(
                pending, timeout=self._config.settings.service.shutdown_timeout
            )
            for task in late:
                log.warning("shutdown deadline reached; abandoning a tick in flight")
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        stop_waiter.cancel()
        return [
            t.result() if t.done() and not t.cancelled() and t.exception() is None else False
            for t in tasks
        ]

    async def _loop(self, stream: CompletedStream, once: bool) -> bool:
        """Tick, then wait out the rest of the interval; returns whether the last tick worked."""
        structlog.contextvars.bind_contextvars(partner=stream.partner_id, stream=stream.name)
        failing = False
        succeeded = False
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                summary = await stream.tick()
            except AuthenticationFailed as exc:
                log.error(str(exc))
                self._health.auth_failed.add(stream.partner_id)
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
                log.info(
                    "tick",
                    seconds=round(time.monotonic() - started, 3),
                    **summary.as_log(),
                )
                if summary.behind and not once:
                    continue
            if once:
                break
            delay = max(0.0, stream.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        return succeeded


def _log_retry_upstream(operation: str, reason: str, delay: float) -> None:
    log.debug(
        "retrying", what="upstream", operation=operation, reason=reason, delay=round(delay, 2)
    )


_log_retry_publish = _log_retry("kafka")
