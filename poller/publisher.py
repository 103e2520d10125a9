"""The Kafka side: an idempotent aiokafka producer that returns only once all is acknowledged.

``publish`` either returns with every event of the batch acknowledged by the broker
(``acks=all``) or raises: the caller commits its cursor only after it returns.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from poller.errors import PublishFailed
from poller.events import Event
from poller.logs import get_logger
from poller.retry import OnRetry, retrying
from poller.settings import KafkaSettings, RetrySettings

log = get_logger(__name__)


class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None: ...

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


class KafkaPublisher:
    def __init__(
        self, settings: KafkaSettings, retry: RetrySettings, on_retry: OnRetry | None = None
    ) -> None:
        self._settings = settings
        self._retry = retry
        self._on_retry = on_retry
        self._producer: AIOKafkaProducer | None = None

    async def _ensure_started(self) -> AIOKafkaProducer:
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
        pending = list(events)
        async for attempt in retrying(self._retry, (PublishFailed,), self._on_retry):
            with attempt:
                pending, error = await self._send(pending)
                if pending:
                    raise PublishFailed(
                        "unacknowledged", f"{len(pending)} event(s) not acknowledged: {error}"
                    )

    async def _send(self, events: list[Event]) -> tuple[list[Event], str]:
        """Send all, await all; return the events that were not acknowledged and why."""
        try:
            producer = await self._ensure_started()
        except PublishFailed as exc:
            return events, str(exc)
        futures: list[asyncio.Future[Any]] = []
        error = ""
        try:
            for event in events:
                futures.append(
                    await producer.send(
                        event.topic, event.value, key=event.key, headers=event.headers
                    )
                )
        except KafkaError as exc:
            error = f"{type(exc).__name__}: {exc}"
        # Whatever was handed over is awaited; what failed or was never sent is returned.
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [e for e, r in zip(events, results, strict=False) if isinstance(r, BaseException)]
        failed.extend(events[len(futures) :])
        if not error:
            errors = [r for r in results if isinstance(r, BaseException)]
            error = f"{type(errors[0]).__name__}: {errors[0]}" if errors else ""
        return failed, error

    async def stop(self, grace_seconds: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), grace_seconds)
        except TimeoutError:
            log.warning("kafka producer did not stop in time", grace_seconds=grace_seconds)
