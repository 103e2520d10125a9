"""The Kafka side: hand a page's events over, await every acknowledgement, retry the rest.

``send`` queues events without waiting (so the caller can prepare its next page meanwhile);
``Publication.acknowledged`` returns once every event is either acknowledged by the broker
(``acks=all``, idempotent producer) or refused by it for good (too large, invalid), and raises
otherwise: the caller commits its cursor only after it returns, and turns refusals into dead
letters. What Kafka answers is decided here, in one place:

- a record the broker will never take (too large, invalid) is a refusal, never retried;
- a producer whose idempotence state the broker rejects (out-of-order sequence, unknown
  producer id, fenced epoch) is replaced by a new one, and what it had not delivered is sent
  again with the same events (the same ``ce_id``);
- refused credentials or permissions are fatal (``KafkaAuthFailed``, exit code 5);
- anything else is weather: retried with the house backoff until it is acknowledged or the
  daemon stops; a producer that stays silent that long is replaced too.

Only aiokafka's public API is used: ``create_batch``/``send_batch``, ``partitions_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
)
from aiokafka.partitioner import DefaultPartitioner

from poller import metrics
from poller.errors import KafkaAuthFailed, PublishFailed
from poller.events import Event
from poller.health import Health
from poller.logs import excerpt, get_logger
from poller.retry import retrying
from poller.settings import KafkaSettings, RetrySettings

log = get_logger(__name__)

# The broker will never take these records: retrying cannot help, a dead letter can.
REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
)
# The broker rejects the producer's idempotence state: only a new producer gets on.
STALE_PRODUCER = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)
FORBIDDEN = (
    AuthenticationFailedError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)
# What a record batch adds around its records, and a record around its key and value.
_BATCH_OVERHEAD = 61
_RECORD_OVERHEAD = 21


class _RefusedCredentials(logging.Handler):
    """aiokafka reports a refused SASL login only as the error it logs before giving up
    ("Unable to bootstrap"): the error itself is the log record's argument, so it is read
    from there, by type, where the client says it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.refusal: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, FORBIDDEN):
                self.refusal = arg


@dataclass(frozen=True)
class Refusal:
    """An event Kafka will never take, and why."""

    event: Event
    reason: str


class Publication(Protocol):
    """Events handed to Kafka, not yet known to be acknowledged."""

    async def acknowledged(self) -> list[Refusal]:
        """Return once every event is acknowledged or refused for good (the refusals)."""
        ...

    def answered(self) -> bool:
        """Whether Kafka has already acknowledged every event (``acknowledged`` would not
        wait): whether it keeps up. A refusal or a failure is no answer here."""
        ...


class Publisher(Protocol):
    # The largest event (key, value, headers) Kafka is asked to take.
    max_event_bytes: int

    async def send(self, events: Sequence[Event]) -> Publication: ...

    async def stop(self, grace_seconds: float) -> None: ...


async def publish(publisher: Publisher, events: Sequence[Event]) -> list[Refusal]:
    """Send and await every acknowledgement."""
    return await (await publisher.send(events)).acknowledged()


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
        "max_request_size": settings.max_request_size,
        "request_timeout_ms": settings.request_timeout_ms,
        "compression_type": None
        if settings.compression_type == "none"
        else settings.compression_type,
    }


def event_size(event: Event) -> int:
    """An event's size in a record batch, as the broker counts it (near enough: varints)."""
    # Summed by map, not a generator: this runs for every event.
    headers = sum(map(len, chain.from_iterable(event.headers))) + 4 * len(event.headers)
    return _RECORD_OVERHEAD + len(event.key or b"") + len(event.value) + headers


@dataclass
class _Batch:
    """Events queued as one record batch; ``future`` is its delivery (None: not queued) by
    ``producer``."""

    events: list[Event]
    future: asyncio.Future[Any] | None = None
    producer: AIOKafkaProducer | None = None


@dataclass(slots=True)
class _Round:
    """What one queueing and wait came to."""

    error: BaseException | None = None
    # The producer whose batch failed with ``error``, and the one whose batch was refused.
    failed_by: AIOKafkaProducer | None = None
    refused_by: AIOKafkaProducer | None = None
    # Something was settled or is to be sent again at once (a refusal, a replaced producer).
    progress: bool = False


def _delivered(future: asyncio.Future[Any] | None) -> bool:
    return (
        future is not None and future.done() and not future.cancelled() and not future.exception()
    )


class _KafkaPublication:
    def __init__(self, publisher: KafkaPublisher, events: list[Event], refused: list[Refusal]):
        self._publisher = publisher
        self._batches = [_Batch(events)] if events else []
        self._refused = refused
        self._queueing: asyncio.Task[None] | None = None
        if self._batches:
            # Queueing waits on the broker (a partition takes one batch at a time): in a task,
            # so the caller builds its next page meanwhile.
            self._queueing = asyncio.create_task(publisher.queue_quietly(self._batches))

    def answered(self) -> bool:
        if self._queueing is not None and not self._queueing.done():
            return False
        return all(_delivered(batch.future) for batch in self._batches)

    async def acknowledged(self) -> list[Refusal]:
        if self._queueing is not None:
            await self._queueing
            self._queueing = None
        if self._batches:
            await self._publisher.settle(self._batches, self._refused)
            self._batches = []
        return self._refused


class KafkaPublisher:
    """One idempotent producer, replaced when the broker no longer accepts its state.

    Events go out as record batches (one per partition and batch size, one delivery future
    each: a per-event ``send()`` costs several times the CPU of building the event); keys pick
    partitions as ``send()`` would (murmur2, as the Java client). While Kafka is unavailable a
    page's events are retried until acknowledged or shutdown begins: nothing upstream moves
    meanwhile (the caller holds its page and its cursor), so memory stays bounded.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        retry: RetrySettings,
        *,
        stopping: asyncio.Event,
        health: Health,
        retry_forever: bool = True,
        replace_after: float = 60.0,
    ) -> None:
        self._settings = settings
        self._retry = retry
        self._health = health
        self._until = stopping if retry_forever else None
        self._replace_after = replace_after
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        # A partition takes batches in the order they were handed over: one queuer at a time.
        self._queue_order = asyncio.Lock()
        self._partitioner = DefaultPartitioner()
        self._failing_since: float | None = None
        self._credentials = _RefusedCredentials()
        logging.getLogger("aiokafka").addHandler(self._credentials)
        self.max_event_bytes = settings.max_request_size - _BATCH_OVERHEAD

    async def send(self, events: Sequence[Event]) -> Publication:
        """Queue ``events``; what can never fit the producer's limit is refused at once."""
        fits: list[Event] = []
        refused: list[Refusal] = []
        for event in events:
            if event_size(event) > self.max_event_bytes:
                refused.append(Refusal(event, self._too_large(event)))
            else:
                fits.append(event)
        return _KafkaPublication(self, fits, refused)

    def _too_large(self, event: Event) -> str:
        return (
            f"the event is {event_size(event)} bytes, more than Kafka takes "
            f"({self.max_event_bytes}: kafka.max_request_size)"
        )

    async def _producer_now(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(**producer_options(self._settings))
            self._credentials.refusal = None
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                refusal = exc if isinstance(exc, FORBIDDEN) else self._credentials.refusal
                if refusal is not None:
                    raise KafkaAuthFailed(f"{type(refusal).__name__}: {refusal}") from None
                raise PublishFailed("unavailable", f"cannot reach Kafka: {exc}") from None
            except asyncio.CancelledError:
                # Cancelled while connecting (a stop): what it opened is closed, not left over.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5.0)
                raise
            self._producer = producer
            return producer

    async def _replace_producer(self, why: str, old: AIOKafkaProducer | None = None) -> None:
        """A new producer (a new producer id): the old one's state is of no use any more.
        ``old``: only if that producer is still the one in use (others may have replaced it
        already for the same cause)."""
        # Never while a page is being queued: it would go on with a stopped producer, whose
        # metadata never comes, and hold the queue for every partner.
        async with self._queue_order, self._starting:
            if old is not None and old is not self._producer:
                return
            old, self._producer = self._producer, None
        if old is None:
            return
        metrics.PRODUCER_REPLACED.labels(why).inc()
        log.info("replacing the Kafka producer; unacknowledged events are sent again", why=why)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), 5.0)

    async def queue_quietly(self, batches: list[_Batch]) -> None:
        with contextlib.suppress(KafkaError, PublishFailed, KafkaAuthFailed):
            await self._queue(batches)

    async def _queue(self, batches: list[_Batch]) -> None:
        """Queue the events of every batch without a live future; ``batches`` ends up holding
        what was queued, then (on failure) one batch of what was not."""
        async with self._queue_order:
            producer = await self._producer_now()
            await self._queue_with(producer, batches)

    async def _queue_with(self, producer: AIOKafkaProducer, batches: list[_Batch]) -> None:
        for batch in batches:
            future = batch.future
            if future is not None and not future.done() and batch.producer is not producer:
                # Queued by a producer since replaced: it will never deliver; send again.
                batch.future = None
        live = [batch for batch in batches if batch.future is not None]
        groups = [batch.events for batch in batches if batch.future is None]
        if not groups:
            return
        queued: list[_Batch] = []
        try:
            await self._send_batches(producer, groups, queued)
        finally:
            sent = {id(event) for batch in queued for event in batch.events}
            rest = [[e for e in group if id(e) not in sent] for group in groups]
            batches[:] = live + queued + [_Batch(events) for events in rest if events]

    async def _send_batches(
        self, producer: AIOKafkaProducer, groups: list[list[Event]], queued: list[_Batch]
    ) -> None:
        """Record batches, in order within each partition; each joins ``queued`` once it has
        its delivery future. Events of different groups never share a record batch: the
        events of a batch the broker refused are tried one by one, and packed together again
        they would be refused together again, for ever (a topic's own ``max.message.bytes``
        below the producer's limit)."""
        partitions: dict[str, list[int]] = {}
        for events in groups:
            by_partition: dict[tuple[str, int], list[Event]] = {}
            for event in events:
                every = partitions.get(event.topic)
                if every is None:
                    every = sorted(await producer.partitions_for(event.topic))
                    partitions[event.topic] = every
                partition = (
                    self._partitioner(event.key, every, every) if len(every) > 1 else every[0]
                )
                by_partition.setdefault((event.topic, partition), []).append(event)
            await self._send_packed(producer, by_partition, queued)

    async def _send_packed(
        self,
        producer: AIOKafkaProducer,
        by_partition: dict[tuple[str, int], list[Event]],
        queued: list[_Batch],
    ) -> None:
        for (topic, partition), waiting in by_partition.items():
            start = 0
            while start < len(waiting):
                batch = producer.create_batch()
                end = start
                while end < len(waiting):
                    event = waiting[end]
                    if (
                        batch.append(
                            key=event.key, value=event.value, timestamp=None, headers=event.headers
                        )
                        is None
                    ):
                        break
                    end += 1
                if end == start:
                    raise AssertionError("an empty record batch refused an event")
                batch.close()  # nothing more joins it: it goes out now instead of lingering
                future = await producer.send_batch(batch, topic, partition=partition)
                queued.append(_Batch(waiting[start:end], future, producer))
                start = end

    async def settle(self, batches: list[_Batch], refused: list[Refusal]) -> None:
        """Retry until every batch is acknowledged or refused (refusals join ``refused``)."""
        topics = {event.topic for batch in batches for event in batch.events}
        async for attempt in retrying(
            self._retry, (PublishFailed,), self._note_retry, until=self._until
        ):
            with attempt:
                await self._attempt(batches, refused)
        self._health.broker_answered()
        self._health.topics_found(topics)
        if self._failing_since is not None:
            log.info("kafka acknowledges again")
            self._failing_since = None

    async def _attempt(self, batches: list[_Batch], refused: list[Refusal]) -> None:
        """Queue what is not queued, wait up to the request time-out, and sort the outcome:
        ``batches`` keeps what is still to be acknowledged; raises PublishFailed if any is.

        A refusal is progress, not a failure, and so is a batch lost with a producer that was
        replaced meanwhile: the round is run again at once. Each refusal splits a batch or
        settles an event, so this ends; the rounds are bounded all the same."""
        started = time.perf_counter()
        for _ in range(2 * sum(len(batch.events) for batch in batches) + 2):
            outcome = await self._round(batches, refused)
            if outcome.refused_by is not None:
                # It numbered the refused batch: for the broker, every later batch of that
                # partition comes out of order. Only a new producer gets on.
                await self._replace_producer("refused", outcome.refused_by)
            if not batches:
                metrics.PRODUCE_LATENCY.observe(time.perf_counter() - started)
                return
            if outcome.error is not None or not outcome.progress:
                break
        await self._failed(outcome.error, batches, outcome.failed_by)

    async def _round(self, batches: list[_Batch], refused: list[Refusal]) -> _Round:
        """One queueing and wait, and what came of it."""
        try:
            await self._queue(batches)
        except (KafkaError, PublishFailed) as exc:
            await self._failed(exc, batches)
        futures = [batch.future for batch in batches if batch.future is not None]
        metrics.UNACKED.inc(sum(len(batch.events) for batch in batches))
        try:
            await asyncio.wait(futures, timeout=self._settings.request_timeout_ms / 1000)
        finally:
            metrics.UNACKED.dec(sum(len(batch.events) for batch in batches))
        remaining: list[_Batch] = []
        outcome = _Round()
        for batch in batches:
            future = batch.future
            if future is None or not future.done():
                remaining.append(batch)
                continue
            failure = future.exception()
            if failure is None:
                continue
            if isinstance(failure, REFUSED):
                remaining.extend(self._refuse_or_split(batch, failure, refused))
                outcome.refused_by = batch.producer
                outcome.progress = True
                continue
            if isinstance(failure, FORBIDDEN):
                raise KafkaAuthFailed(f"{type(failure).__name__}: {failure}")
            batch.future = None  # failed for good: its events are queued again
            remaining.append(batch)
            if batch.producer is not self._producer:
                # Its producer was replaced meanwhile (another page's refusal, say): the new
                # one sends it again; Kafka itself did not fail.
                outcome.progress = True
                continue
            outcome.error, outcome.failed_by = failure, batch.producer
        batches[:] = remaining
        if isinstance(outcome.error, STALE_PRODUCER) and outcome.failed_by is outcome.refused_by:
            # Out of order behind the refused batch: the producer replaced for the refusal
            # sends it again.
            outcome.error = None
        return outcome

    def _refuse_or_split(
        self, batch: _Batch, failure: BaseException, refused: list[Refusal]
    ) -> list[_Batch]:
        """A batch the broker refused: alone, its event is refused for good; with others,
        each event is tried on its own, so only the one at fault is refused."""
        if len(batch.events) == 1:
            event = batch.events[0]
            refused.append(Refusal(event, f"kafka refused the event: {type(failure).__name__}"))
            metrics.PRODUCE_ERRORS.labels("refused").inc()
            return []
        return [_Batch([event]) for event in batch.events]

    async def _failed(
        self,
        error: BaseException | None,
        pending: list[_Batch],
        failed_by: AIOKafkaProducer | None = None,
    ) -> None:
        """Raises PublishFailed after replacing the producer (``failed_by``, unless it was
        replaced already) where only that can help."""
        if isinstance(error, FORBIDDEN):
            raise KafkaAuthFailed(f"{type(error).__name__}: {error}")
        missing_topic = isinstance(error, UnknownTopicOrPartitionError)
        if missing_topic:
            self._topics_missing(pending)
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning(
                "kafka is not acknowledging; retrying",
                error=excerpt(str(error or "no ack"), 300),
                topics=sorted({event.topic for batch in pending for event in batch.events}),
            )
        if isinstance(error, STALE_PRODUCER):
            await self._replace_producer(type(error).__name__, failed_by)
        elif now - self._failing_since > self._replace_after:
            self._failing_since = now
            await self._replace_producer("silent")
        if not missing_topic:
            self._health.broker_failed()
        if isinstance(error, PublishFailed):
            raise error
        reason = "timeout" if error is None else type(error).__name__
        metrics.PRODUCE_ERRORS.labels("timeout" if error is None else "send").inc()
        count = sum(len(batch.events) for batch in pending)
        detail = "no acknowledgement in time" if error is None else f"{reason}: {error}"
        raise PublishFailed(reason, f"{count} event(s) not acknowledged: {detail}")

    def _topics_missing(self, pending: list[_Batch]) -> None:
        """The broker answers, and has no such topic (nor creates it): said once per topic,
        by name, and readiness names it instead of calling Kafka unreachable. The events are
        retried as for any failure (a restarting broker says so of a topic for a moment)."""
        topics = sorted({event.topic for batch in pending for event in batch.events})
        for topic in self._health.topics_missing(topics):
            log.error(
                "the topic does not exist and the broker does not create it; events wait for "
                "it (create it, or run `glance-poller check --create-topics`)",
                topic=topic,
            )

    def _note_retry(self, error: BaseException, delay: float, attempt: int) -> None:
        """Says "failing" once and "recovered" once, never per retry."""
        metrics.RETRIES.labels("", "kafka", getattr(error, "reason", "unknown")).inc()
        log.debug("retrying", target="kafka", error=str(error), delay=round(delay, 2))

    async def ping(self, limit_seconds: float) -> bool:
        """Ask Kafka for metadata: the broker answers, or it does not (refused credentials
        raise KafkaAuthFailed)."""
        try:
            producer = await asyncio.wait_for(self._producer_now(), limit_seconds)
            await asyncio.wait_for(producer.client.fetch_all_metadata(), limit_seconds)
        except (PublishFailed, KafkaError, TimeoutError):
            self._health.broker_failed()
            return False
        self._health.broker_answered()
        return True

    async def stop(self, grace_seconds: float) -> None:
        logging.getLogger("aiokafka").removeHandler(self._credentials)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), grace_seconds)
        except TimeoutError:
            log.warning("kafka producer did not stop in time", grace_seconds=grace_seconds)


class _Acknowledged:
    async def acknowledged(self) -> list[Refusal]:
        return []

    def answered(self) -> bool:
        return True


class DiscardingPublisher:
    """Takes every event and sends none (``backfill --dry-run``: the same scan, no effect)."""

    max_event_bytes = 1 << 62

    async def send(self, events: Sequence[Event]) -> Publication:
        return _Acknowledged()

    async def stop(self, grace_seconds: float) -> None:
        return None
