"""The Kafka side: an idempotent aiokafka producer that returns only once all is acknowledged.

``publish`` either returns with every event of the batch acknowledged by the broker
(``acks=all``) or raises: the caller commits its cursor only after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from poller import metrics
from poller.errors import PublishFailed
from poller.events import Event
from poller.health import Health
from poller.logs import get_logger
from poller.native import NATIVE
from poller.retry import retrying
from poller.settings import KafkaSettings, RetrySettings

if NATIVE:
    from poller._fastpath import RecordBatch, partition_index

log = get_logger(__name__)


class Publication(Protocol):
    """Events handed to Kafka, not yet known to be acknowledged."""

    async def acknowledged(self) -> None: ...


class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None: ...

    async def send(self, events: Sequence[Event]) -> Publication: ...

    async def stop(self, grace_seconds: float) -> None: ...


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """Where the broker is and how to authenticate: shared by producer and consumers."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        if settings.ssl_certfile is not None:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            )
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        password = settings.sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka producer arguments; shared with the benchmark's bare-producer ceiling."""
    return connection_options(settings) | {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_size,
        "request_timeout_ms": settings.request_timeout_ms,
        "compression_type": None
        if settings.compression_type == "none"
        else settings.compression_type,
    }


@dataclass
class _InFlight:
    """Events sent as one record batch, awaiting ``future``; without one, not queued yet."""

    events: list[Event]
    future: asyncio.Future[Any] | None = None


@dataclass
class _Publication:
    publisher: KafkaPublisher
    inflight: list[_InFlight]
    # Hands the batches to aiokafka, one after the other, while the caller goes on.
    queueing: asyncio.Task[None] | None = None

    async def acknowledged(self) -> None:
        if self.queueing is not None:
            await self.queueing
        await self.publisher._acknowledged(self.inflight)


def _fill(batch: RecordBatch | BatchBuilder, events: list[Event], start: int) -> int:
    """Appends ``events[start:]`` until the batch is full; returns the index of the first
    event left out."""
    if not isinstance(batch, BatchBuilder):
        return batch.extend(events, start)
    for index in range(start, len(events)):
        event = events[index]
        metadata = batch.append(
            key=event.key, value=event.value, timestamp=None, headers=event.headers
        )
        if metadata is None:
            return index
    return len(events)


class KafkaPublisher:
    """Sends batches and waits for every acknowledgement.

    Events go out as record batches, one per partition and batch size, each with one
    delivery future: a per-event ``send()`` costs several times the CPU of building the
    event. Keys pick partitions exactly as ``send()`` would (murmur2, as the Java client).
    Uncompressed batches are written by the native extension, a page per call, byte for
    byte as aiokafka's builder writes them (tests/unit/test_record_batch.py).

    While Kafka is unavailable a batch is retried with the house backoff until it is
    acknowledged or shutdown begins: nothing upstream moves meanwhile (the caller holds its
    page and its cursor, and fetches at most one page ahead), so memory stays bounded.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        retry: RetrySettings,
        *,
        stopping: asyncio.Event,
        health: Health,
        retry_forever: bool = True,
    ) -> None:
        self._settings = settings
        self._retry = retry
        self._stopping = stopping
        self._health = health
        self._failing = False
        self._until = stopping if retry_forever else None
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        # aiokafka takes one batch per partition at a time; batches wait their turn here, in
        # the order they were sent (the lock is first come, first served).
        self._queue_order = asyncio.Lock()
        self._partitioner = DefaultPartitioner()
        # Record batches written natively (the same bytes as aiokafka's builder, a page per
        # call); aiokafka's own builder when the extension is missing or batches compress.
        self._native_batches = NATIVE and settings.compression_type == "none"

    async def _ensure_started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(**producer_options(self._settings))
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                raise PublishFailed("unavailable", f"cannot reach Kafka: {exc}") from None
            self._producer = producer
            return producer

    async def publish(self, events: Sequence[Event]) -> None:
        """Return once every event is acknowledged; raise PublishFailed only on shutdown
        (or, without ``retry_forever``, after the policy's attempts)."""
        await (await self.send(events)).acknowledged()

    async def send(self, events: Sequence[Event]) -> _Publication:
        """Queue ``events`` without waiting for Kafka, so the caller can prepare more work
        meanwhile; ``acknowledged()`` then waits (and retries) as ``publish`` does. If Kafka
        cannot take them now, nothing is lost: ``acknowledged()`` sends them."""
        # One delivery future per batch: a future still pending is awaited again, never
        # replaced, so an attempt that runs out of patience re-sends nothing twice.
        if not events:
            return _Publication(self, [])
        inflight = [_InFlight(list(events))]
        # aiokafka accepts a partition's next batch only once it has taken the previous one
        # (a round trip to the broker), so queueing happens in a task: the caller builds its
        # next page meanwhile instead of waiting.
        return _Publication(self, inflight, asyncio.create_task(self._queue_quietly(inflight)))

    async def _queue_quietly(self, inflight: list[_InFlight]) -> None:
        with contextlib.suppress(KafkaError, PublishFailed):
            await self._queue(inflight)

    async def _acknowledged(self, inflight: list[_InFlight]) -> None:
        if not inflight:
            return  # nothing was asked of Kafka, so nothing is learnt about it either
        async for attempt in retrying(
            self._retry, (PublishFailed,), self._note_retry, until=self._until
        ):
            with attempt:
                inflight = await self._attempt(inflight)
        self._health.broker_answered()
        if self._failing:
            log.info("kafka acknowledges again")
        self._failing = False

    async def _queue(self, inflight: list[_InFlight]) -> list[_InFlight]:
        """Queue what has no live future. ``inflight`` ends up holding what was queued, then
        what could not be (raises if Kafka refused part of it); returns what was queued."""
        pending = [item for item in inflight if item.future is not None]
        unsent = [event for item in inflight if item.future is None for event in item.events]
        try:
            producer = await self._ensure_started()
            async with self._queue_order:
                await self._send(producer, unsent, pending)
        except BaseException:
            # Keep what was queued (its future is awaited next time), re-send only the rest.
            queued = {id(event) for item in pending for event in item.events}
            rest = [event for event in unsent if id(event) not in queued]
            inflight[:] = pending + ([_InFlight(rest)] if rest else [])
            raise
        inflight[:] = pending
        return pending

    async def _attempt(self, inflight: list[_InFlight]) -> list[_InFlight]:
        """Send what has no live future and wait up to the request timeout for the acks;
        raise PublishFailed if anything is still unacknowledged (``inflight`` stays current)."""
        started = time.perf_counter()
        try:
            pending = await self._queue(inflight)
        except KafkaError as exc:
            self._failed("send", f"{type(exc).__name__}: {exc}", inflight)
        except PublishFailed as exc:
            self._failed(exc.reason, str(exc), inflight)
        futures = [item.future for item in pending if item.future is not None]
        metrics.UNACKED.set(sum(len(item.events) for item in pending))
        await asyncio.wait(futures, timeout=self._settings.request_timeout_ms / 1000)
        remaining: list[_InFlight] = []
        error: BaseException | None = None
        for item in pending:
            future = item.future
            if future is not None and future.done() and future.exception() is None:
                continue
            if future is not None and future.done():
                error = future.exception()
                item.future = None  # failed for good: send it again
            remaining.append(item)
        metrics.UNACKED.set(sum(len(item.events) for item in remaining))
        if remaining:
            reason = "ack" if error is not None else "timeout"
            detail = f"{type(error).__name__}: {error}" if error else "no acknowledgement in time"
            inflight[:] = remaining
            self._failed(reason, detail, remaining)
        metrics.PRODUCE_LATENCY.observe(time.perf_counter() - started)
        return remaining

    async def _send(
        self, producer: AIOKafkaProducer, events: list[Event], sent: list[_InFlight]
    ) -> None:
        """Queue ``events`` as record batches, in order within each partition; each batch
        joins ``sent`` as soon as it has its future."""
        by_topic: dict[str, list[Event]] = {}
        for event in events:
            by_topic.setdefault(event.topic, []).append(event)
        for topic, published in by_topic.items():
            every = sorted(await producer.partitions_for(topic))
            if len(every) == 1:
                by_partition = {every[0]: published}
            else:
                by_partition = {}
                for event in published:
                    partition = self._partition(event.key, every)
                    by_partition.setdefault(partition, []).append(event)
            for partition, queued in by_partition.items():
                start = 0
                while start < len(queued):
                    batch = self._new_batch(producer)
                    end = _fill(batch, queued, start)
                    if end == start:
                        raise AssertionError("an empty record batch refused an event")
                    # Nothing more will join it: closed, it goes out now instead of lingering.
                    batch.close()
                    item = _InFlight(queued[start:end])
                    item.future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append(item)
                    start = end

    def _partition(self, key: bytes | None, every: list[int]) -> int:
        """The partition ``send()`` would pick: murmur2 of the key (natively when built, as
        aiokafka's own is pure Python), a random one without a key."""
        if key is not None and NATIVE:
            return every[partition_index(key, len(every))]
        partition: int = self._partitioner(key, every, every)
        return partition

    def _new_batch(self, producer: AIOKafkaProducer) -> RecordBatch | BatchBuilder:
        if self._native_batches:
            return RecordBatch(self._settings.max_batch_size)
        return producer.create_batch()

    def _failed(self, reason: str, detail: str, pending: list[_InFlight]) -> NoReturn:
        self._health.broker_failed()
        metrics.PRODUCE_ERRORS.labels(reason).inc()
        raise PublishFailed(reason, f"{len(pending)} event(s) not acknowledged: {detail}")

    def _note_retry(self, error: BaseException, delay: float, attempt: int) -> None:
        """Says "failing" once and "recovered" once, never per retry."""
        metrics.RETRIES.labels("", "kafka", getattr(error, "reason", "unknown")).inc()
        if not self._failing:
            log.warning("kafka is not acknowledging; retrying", error=str(error))
        self._failing = True
        log.debug("retrying", target="kafka", error=str(error), delay=round(delay, 2))

    async def ping(self, limit_seconds: float) -> bool:
        """Ask Kafka for metadata: the broker answers, or it does not."""
        try:
            producer = await asyncio.wait_for(self._ensure_started(), limit_seconds)
            await asyncio.wait_for(producer.client.fetch_all_metadata(), limit_seconds)
        except (PublishFailed, KafkaError, TimeoutError):
            self._health.broker_failed()
            return False
        self._health.broker_answered()
        return True

    async def stop(self, grace_seconds: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), grace_seconds)
        except TimeoutError:
            log.warning("kafka producer did not stop in time", grace_seconds=grace_seconds)
