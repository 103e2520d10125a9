"""The local broker's SASL listener, checked with plain aiokafka.

The poller's Kafka SASL settings are only as well tested as the broker they are tried
against, so this proves that broker first: each mechanism lets a known user in, a wrong
password is refused in bounded time, both survive a restart, and no password reaches
the broker's log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.integration.harness import BrokerFailed, LocalBroker, running

USERS = {"poller": "poller-pass-1", "other": "other-pass-2"}
WRONG_PASSWORD = "not-the-poller-pass"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with running(LocalBroker(sasl_users=USERS)) as broker:
        yield broker


def _sasl_producer(
    broker: LocalBroker, mechanism: str, user: str, password: str
) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=broker.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username=user,
        sasl_plain_password=password,
        request_timeout_ms=10_000,
    )


async def _send_over_sasl(broker: LocalBroker, mechanism: str, user: str) -> None:
    """Send one record as ``user`` over SASL and read it back over PLAINTEXT."""
    topic = f"sasl-{mechanism.lower()}-{user}-{uuid.uuid4().hex[:8]}"
    value = f"{mechanism} as {user}".encode()
    producer = _sasl_producer(broker, mechanism, user, USERS[user])
    await asyncio.wait_for(producer.start(), 30)
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    # The consumer uses the PLAINTEXT listener, so this checks where the record landed
    # independently of the SASL path that wrote it.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == value


async def _refused(broker: LocalBroker, mechanism: str, user: str, password: str) -> None:
    """Starting a producer with a bad password fails (an error or our time limit), never hangs."""
    producer = _sasl_producer(broker, mechanism, user, password)
    try:
        with pytest.raises((KafkaError, TimeoutError)):
            await asyncio.wait_for(producer.start(), 20)
    finally:
        await producer.stop()


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_each_mechanism_lets_each_user_send(
    broker: LocalBroker, mechanism: str, user: str
) -> None:
    await _send_over_sasl(broker, mechanism, user)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_wrong_password_is_refused(broker: LocalBroker, mechanism: str) -> None:
    await _refused(broker, mechanism, "poller", WRONG_PASSWORD)


async def test_another_users_password_is_refused(broker: LocalBroker) -> None:
    await _refused(broker, "SCRAM-SHA-256", "poller", USERS["other"])


async def test_sasl_survives_a_restart(broker: LocalBroker) -> None:
    """SCRAM users live in the metadata log and PLAIN ones in the config: both must come back."""
    before = (broker.bootstrap, broker.sasl_bootstrap)
    # start() runs its own event loop to probe the broker, so it needs a thread of its own.
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)
    assert (broker.bootstrap, broker.sasl_bootstrap) == before
    for mechanism in MECHANISMS:
        await _send_over_sasl(broker, mechanism, "poller")
    await _refused(broker, "SCRAM-SHA-512", "poller", WRONG_PASSWORD)


async def test_no_password_reaches_the_broker_log(broker: LocalBroker) -> None:
    # Both a success and a failure, so the log has seen each kind of authentication.
    await _send_over_sasl(broker, "PLAIN", "other")
    await _refused(broker, "PLAIN", "other", WRONG_PASSWORD)
    log = broker.log_path.read_text(errors="replace")
    assert "Kafka Server started" in log  # the log being checked is the real one
    for secret in [*USERS.values(), WRONG_PASSWORD]:
        assert secret not in log


def test_a_broker_without_users_has_no_sasl_listener() -> None:
    plain = LocalBroker()
    try:
        assert plain.sasl_port is None
        with pytest.raises(BrokerFailed):
            _ = plain.sasl_bootstrap
    finally:
        plain.cleanup()
