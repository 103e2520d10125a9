"""Crashes and stops with real processes: SIGKILL many times mid-scan, SIGTERM mid-page, and
SIGTERM while Kafka cannot be reached. What reached the real broker is compared with the
emulator's own listing, and what the state file committed with what reached Kafka."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

# On sys.path by tests/integration/harness.py, as for the shared broker.
from local_broker import DEFAULT_JARS, BrokerFailed, LocalBroker, free_port

from poller.state import StateStore
from tests.integration.harness import (
    PARTNER_ID,
    PYTHON,
    Consumed,
    Emulator,
    PollerRun,
    Topics,
    consume,
    kill,
    log_events,
    wait_until,
)
from tests.integration.test_completed_feed import expected_value

COMPLETED_OPERATION = "PartnerCompletedSessions"
PRODUCE = 0  # the Kafka API key of Produce requests


class TopicWatcher:
    """A consumer that keeps reading ``topics`` from the beginning in a background thread, so
    a test can wait for "new events arrived" without starting a consumer each time."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="topic-watcher", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the topic watcher's consumer did not start")
        if self._error is not None:
            raise self._error

    def count(self, topic: str) -> int:
        if self._error is not None:
            raise AssertionError(f"the topic watcher failed: {self._error!r}")
        with self._lock:
            return self._counts[topic]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as exc:  # reported to the test thread by count()
            self._error = exc
            self._ready.set()

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # The topics do not exist until the daemon's first publish: look again often.
            metadata_max_age_ms=500,
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        self._ready.set()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                with self._lock:
                    for partition, messages in batch.items():
                        self._counts[partition.topic] += len(messages)
        finally:
            await consumer.stop()


class AckDelayProxy:
    """A TCP proxy in front of a Kafka listener that holds back every Produce response for
    ``delay`` seconds. Other responses are not delayed themselves, but keep their order: one
    that follows a held Produce response on the same connection waits for it.

    The broker appends a batch as soon as it arrives, so consumers see it; the producer
    learns of it ``delay`` later. That widens the window between "on the topic" and "the
    daemon committed it" from milliseconds to ``delay``: a kill can land inside it."""

    def __init__(self, upstream_port: int) -> None:
        self.delay = 0.0
        self._upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ack-delay-proxy")
        self._thread.daemon = True
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def shut() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _connection(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        try:
            broker, to_broker = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            to_client.close()
            return
        produce_ids: set[int] = set()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def requests() -> None:
            while True:  # size, then api_key (int16), api_version (int16), correlation id
                frame = await _frame(client)
                if int.from_bytes(frame[4:6], "big", signed=True) == PRODUCE:
                    produce_ids.add(int.from_bytes(frame[8:12], "big", signed=True))
                to_broker.write(frame)
                await to_broker.drain()

        async def responses() -> None:
            while True:  # size, then correlation id
                frame = await _frame(broker)
                correlation = int.from_bytes(frame[4:8], "big", signed=True)
                hold = self.delay if correlation in produce_ids else 0.0
                produce_ids.discard(correlation)
                held.put_nowait((loop.time() + hold, frame))

        async def release() -> None:
            while True:
                due, frame = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                to_client.write(frame)
                await to_client.drain()

        pumps = [asyncio.create_task(pump()) for pump in (requests, responses, release)]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (to_broker, to_client):
                writer.close()


async def _frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    return head + await reader.readexactly(int.from_bytes(head, "big", signed=True))


@pytest.fixture(scope="module")
def delayed_acks(request: pytest.FixtureRequest) -> Iterator[tuple[str, AckDelayProxy | None]]:
    """A broker of its own whose produce acknowledgements a test can delay (``proxy.delay``,
    0 to begin with), and the proxy that delays them; without the local broker's jars, the
    shared broker and no proxy. One per module: each test sets the delay it needs."""
    if not any(DEFAULT_JARS.glob("kafka_2.13-*.jar")):
        yield request.getfixturevalue("kafka_bootstrap"), None
        return
    broker = LocalBroker(heap="256m")
    proxy = AckDelayProxy(broker.port)
    # Clients are told to connect through the proxy.
    broker.properties["advertised.listeners"] = f"PLAINTEXT://127.0.0.1:{proxy.port}"
    try:
        try:
            broker.start()
        except BrokerFailed as exc:
            pytest.fail(f"the delayed-acks broker did not start:\n{exc}", pytrace=False)
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        broker.cleanup()
        proxy.close()


def state_show(poller: PollerRun) -> dict[str, Any]:
    """``python -m poller state show`` on the poller's own configuration (daemon stopped).
    The file is named by $POLLER_CONFIG, which every version of the command line reads."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    env["POLLER_CONFIG"] = str(poller.config_file())
    result = subprocess.run(
        [PYTHON, "-m", "poller", "state", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(orjson.loads(result.stdout))


def stream_state(snapshot: dict[str, Any], stream: str) -> dict[str, Any] | None:
    found = [
        s for s in snapshot["streams"] if s["partnerId"] == PARTNER_ID and s["stream"] == stream
    ]
    return found[0] if found else None


def committed(poller: PollerRun) -> tuple[int, int | None]:
    """(completed ids, nextId of the scan in progress or None) as the state file holds them,
    read in-process: twenty `state show` processes would cost seconds."""
    if not poller.state_path.exists():
        return 0, None
    store = StateStore.open(poller.state_path)
    try:
        snapshot = store.snapshot()
    finally:
        store.close()
    completed = stream_state(snapshot, "completed")
    if completed is None:
        return 0, None
    scan = completed["scanInProgress"]
    return completed["emittedIds"], scan["nextId"] if scan else None


def by_session(records: list[Consumed]) -> dict[int, list[Consumed]]:
    copies: dict[int, list[Consumed]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        copies[int(record.key)].append(record)
    return copies


def assert_copies_identical(copies: dict[int, list[Consumed]], topic: str) -> None:
    for session_id, found in copies.items():
        first = found[0]
        for other in found[1:]:
            assert other.headers == first.headers, (
                f"{topic}: session {session_id}'s copies differ in headers "
                f"({first.headers} vs {other.headers})"
            )
            assert other.value == first.value, f"{topic}: session {session_id}'s copies differ"


def add_ended_traffic(emulator: Emulator, count: int, seed: int) -> dict[int, dict[str, Any]]:
    """``count`` sessions, all ended by the frozen 12:00 and started between 07:00 and 11:00:
    all in the first scan's one window, [05:55, 12:00) with a 6h start_lookback. The reconcile
    sweep only looks at buckets before the scan's cursor (06:00 until the window is done),
    where there is nothing: only the fast scan emits, page by page."""
    created = emulator.admin(
        "POST",
        "/admin/traffic",
        {
            "partnerId": PARTNER_ID,
            "count": count,
            "from": "2026-03-10T07:00:00Z",
            "until": "2026-03-10T11:00:00Z",
            "minDuration": 5,
            "maxDuration": 900,
            "users": 6,
            "seed": seed,
        },
    )
    assert created["created"] == count
    ended = {s["id"]: s for s in emulator.sessions("ended")}
    assert len(ended) == count, "some generated sessions are not ended at the frozen clock"
    return ended


def slow_pages(emulator: Emulator, delay: float, count: int = 10_000) -> None:
    emulator.admin(
        "POST",
        "/admin/faults",
        {
            "calls": [
                {"kind": "slow", "operation": COMPLETED_OPERATION, "count": count, "delay": delay}
            ]
        },
    )


def test_twenty_sigkills_while_ten_thousand_sessions_flow(
    emulator: Emulator, poller: PollerRun, delayed_acks: tuple[str, AckDelayProxy | None]
) -> None:
    page_size, kills, total = 100, 20, 10_000
    rng = random.Random(20260310)
    listing = add_ended_traffic(emulator, total, seed=31)
    upstream = sorted(listing)
    pages = [upstream[i : i + page_size] for i in range(0, total, page_size)]
    page_of = {session_id: n for n, page in enumerate(pages) for session_id in page}
    # 0.5 s per page: ~100 pages would take ~50 s, so twenty kills land mid-scan.
    slow_pages(emulator, 0.5)
    poller.settings["glance"] = {"page_size": page_size}
    poller.settings["completed"] = {"start_lookback": "6h", "interval": "1h"}
    # Acknowledgements 0.3 s late: a page's events are on the topics, not yet committed, for
    # about half of each page's cycle (its started events go first, then its completed ones),
    # so a fair share of the kills fall inside a page in flight.
    poller.bootstrap, proxy = delayed_acks
    if proxy is not None:
        proxy.delay = 0.3

    watcher = TopicWatcher(poller.bootstrap, poller.topics.completed)
    # Per kill: the completed ids and the nextId committed.
    at_kill: list[tuple[int, int | None]] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        seen = 0
        for n in range(kills):
            daemon = poller.start()

            def progressed(seen: int = seen, daemon: subprocess.Popen[bytes] = daemon) -> bool:
                return watcher.count(poller.topics.completed) > seen or daemon.poll() is not None

            wait_until(
                progressed,
                timeout=60,
                what=f"new events after restart {n}",
                interval=0.02,
            )
            assert daemon.poll() is None, poller.log_text()[-3000:]
            time.sleep(rng.uniform(0.0, 1.2))
            assert kill(daemon, signal.SIGKILL) == -signal.SIGKILL
            seen = watcher.count(poller.topics.completed)
            at_kill.append(committed(poller))
    finally:
        if daemon is not None and daemon.poll() is None:
            kill(daemon)
        watcher.close()

    # The empirical check behind the page-alignment claim: every committed position is a
    # page boundary of the one paging (ascending ids, page_size each) of the one window.
    for emitted, next_id in at_kill:
        assert emitted % page_size == 0, at_kill
        if emitted == 0:
            assert next_id is None, at_kill  # nothing committed yet, no cursor
        else:
            assert next_id == (upstream[emitted] if emitted < total else None), at_kill
    assert at_kill[-1][0] < total, "the scan finished before the last kill; the test proves less"
    # Pipelined: the page after the last committed one awaits its acknowledgements while the
    # next is already sent; both are in flight at a kill.
    in_flight = Counter(
        page for emitted, _ in at_kill for page in (emitted // page_size, emitted // page_size + 1)
    )

    emulator.admin("DELETE", "/admin/faults")
    if proxy is not None:
        proxy.delay = 0.0
    for _ in range(3):
        result = poller.once(timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        if committed(poller)[0] == total:
            break
    assert committed(poller) == (total, None)

    for topic in (poller.topics.completed, poller.topics.started):
        records = consume(poller.bootstrap, topic, expect=total, idle=2.0, timeout=120)
        copies = by_session(records)
        assert sorted(copies) == upstream, f"{topic}: a session was lost (or is foreign)"
        assert_copies_identical(copies, topic)
        if topic == poller.topics.completed:
            for session_id, found in copies.items():
                assert found[0].value == expected_value(listing[session_id]), session_id
        duplicated = {i: len(c) - 1 for i, c in copies.items() if len(c) > 1}
        # The weak bound: each kill re-emits at most the two pages it interrupted.
        assert sum(duplicated.values()) <= 2 * kills * page_size, topic
        # The strong one (it holds: same window, same paging after every restart, checked
        # above): duplicates come only from the page in flight at a kill, and a page has at
        # most one extra copy per kill that interrupted it.
        for session_id, extra in duplicated.items():
            page = page_of[session_id]
            assert extra <= in_flight[page], (
                f"{topic}: session {session_id} (page {page}) has {extra} extra copies; pages "
                f"in flight at the kills: {sorted(in_flight.elements())}"
            )
        print(
            f"{topic}: {len(records)} records, {sum(duplicated.values())} duplicates on "
            f"pages {sorted({page_of[i] for i in duplicated})}; pages in flight at the kills: "
            f"{sorted(in_flight.elements())}"
        )


def test_sigterm_during_a_page_finishes_it_and_exits_0(
    emulator: Emulator, poller: PollerRun
) -> None:
    page_size, total = 100, 1000
    upstream = sorted(add_ended_traffic(emulator, total, seed=41))
    slow_pages(emulator, 2.0, count=1000)
    poller.settings["glance"] = {"page_size": page_size}
    poller.settings["completed"] = {"start_lookback": "6h", "interval": "1h"}
    poller.settings["service"] = {"shutdown_timeout": "15s"}

    watcher = TopicWatcher(poller.bootstrap, poller.topics.completed)
    try:
        daemon = poller.start()
        try:
            wait_until(
                lambda: watcher.count(poller.topics.completed) >= page_size,
                timeout=60,
                what="the first page",
                interval=0.02,
            )
            # The next page is asked for as soon as the first is committed: it is in flight
            # (2 s) now.
            at_sigterm = watcher.count(poller.topics.completed)
            daemon.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = daemon.wait(timeout=15 + 10)
            took = time.monotonic() - sent
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        watcher.close()

    log = poller.log_text()
    assert code == 0, log[-3000:]
    assert took < 15, f"SIGTERM to exit took {took:.1f}s"
    assert log_events(log, "stopping: finishing the page in flight"), log[-3000:]
    assert log_events(log, "glance-poller stopped"), log[-3000:]
    assert not log_events(log, "shutdown deadline reached; abandoning a tick in flight")

    records = consume(poller.bootstrap, poller.topics.completed, idle=2.0)
    copies = by_session(records)
    assert len(records) == len(copies), "duplicates before any crash"
    assert len(records) % page_size == 0 and 0 < len(records) < total, len(records)
    assert len(records) > at_sigterm, (
        f"the page in flight at SIGTERM was not finished: {at_sigterm} events when it was "
        f"sent, {len(records)} after the exit"
    )
    completed = stream_state(state_show(poller), "completed")
    assert completed is not None
    assert completed["emittedIds"] == len(copies), completed
    assert completed["scanInProgress"]["nextId"] == upstream[len(records)], completed
    print(
        f"SIGTERM with {at_sigterm} events on the topic; after the exit ({took:.2f}s): "
        f"{len(records)} events, {completed['emittedIds']} ids committed"
    )

    emulator.admin("DELETE", "/admin/faults")
    result = poller.once()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for topic in (poller.topics.completed, poller.topics.started):
        records = consume(poller.bootstrap, topic, expect=total, idle=2.0)
        counts = Counter(int(r.key) for r in records if r.key is not None)
        assert sorted(counts) == upstream, f"{topic}: a session was lost"
        assert max(counts.values()) == 1, (
            f"{topic}: duplicated after a clean stop: {[i for i, n in counts.items() if n > 1]}"
        )


def test_sigterm_with_kafka_unreachable_exits_within_the_deadline(
    emulator: Emulator, tmp_path: Path
) -> None:
    shutdown_timeout = 3.0
    add_ended_traffic(emulator, 300, seed=43)
    nowhere = f"127.0.0.1:{free_port()}"
    poller = PollerRun(tmp_path, emulator.url, nowhere, Topics.unique())
    poller.settings["glance"] = {"page_size": 100}
    poller.settings["completed"] = {"start_lookback": "6h", "interval": "1h"}
    poller.settings["service"] = {"shutdown_timeout": f"{shutdown_timeout:g}s"}

    daemon = poller.start()
    try:
        # A page was fetched, and its publish is being retried.
        wait_until(
            lambda: (
                emulator.stats().get(COMPLETED_OPERATION, {}).get("ok", 0) >= 1
                and bool(log_events(poller.log_text(), "kafka is not acknowledging; retrying"))
            ),
            timeout=60,
            what="a fetched page whose publish is retried",
        )
        assert daemon.poll() is None, poller.log_text()[-3000:]
        daemon.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = daemon.wait(timeout=shutdown_timeout + 10)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    log = poller.log_text()
    assert code == 0, log[-3000:]
    assert took <= shutdown_timeout + 10
    assert log_events(log, "glance-poller stopped"), log[-3000:]
    snapshot = state_show(poller)
    assert all(s["emittedIds"] == 0 for s in snapshot["streams"]), snapshot
    assert stream_state(snapshot, "completed") is None, f"a cursor was committed: {snapshot}"
    print(f"SIGTERM to exit with Kafka unreachable: {took:.2f}s")


def test_sigterm_with_kafka_never_acknowledging_exits_within_the_deadline(
    emulator: Emulator, tmp_path: Path, delayed_acks: tuple[str, AckDelayProxy | None]
) -> None:
    """Harder than an unreachable broker: Kafka takes the page and never answers, so the
    publish waits on acknowledgements the stop signal cannot cut short; only the deadline
    can. Nothing is committed, and the next run re-emits the page, with the same ids."""
    bootstrap, proxy = delayed_acks
    if proxy is None:
        pytest.skip("needs the local broker's jars, for a broker behind the proxy")
    shutdown_timeout, total = 3.0, 300
    upstream = sorted(add_ended_traffic(emulator, total, seed=47))
    proxy.delay = 3600.0
    poller = PollerRun(tmp_path, emulator.url, bootstrap, Topics.unique())
    poller.settings["glance"] = {"page_size": 100}
    poller.settings["completed"] = {"start_lookback": "6h", "interval": "1h"}
    poller.settings["service"] = {"shutdown_timeout": f"{shutdown_timeout:g}s"}

    watcher = TopicWatcher(bootstrap, poller.topics.started)
    try:
        daemon = poller.start()
        try:
            # The first page's started events are on the broker: their publish is waiting.
            wait_until(
                lambda: watcher.count(poller.topics.started) >= 1,
                timeout=60,
                what="the first events to reach the broker",
            )
            time.sleep(0.5)
            daemon.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = daemon.wait(timeout=shutdown_timeout + 10)
            took = time.monotonic() - sent
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    finally:
        watcher.close()
    log = poller.log_text()
    print(f"SIGTERM to exit with Kafka never acknowledging: {took:.2f}s")
    assert code == 0, log[-3000:]
    assert took <= shutdown_timeout + 10
    assert log_events(log, "shutdown deadline reached; abandoning a tick in flight"), log[-3000:]
    assert log_events(log, "glance-poller stopped"), log[-3000:]
    snapshot = state_show(poller)
    assert all(s["emittedIds"] == 0 for s in snapshot["streams"]), snapshot
    assert stream_state(snapshot, "completed") is None, f"a cursor was committed: {snapshot}"

    proxy.delay = 0.0
    result = poller.once()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for topic in (poller.topics.completed, poller.topics.started):
        copies = by_session(consume(bootstrap, topic, expect=total, idle=2.0))
        assert sorted(copies) == upstream, f"{topic}: a session was lost"
        assert_copies_identical(copies, topic)
        assert all(len(c) <= 2 for c in copies.values()), topic
        duplicated = sorted(i for i, c in copies.items() if len(c) > 1)
        assert set(duplicated) <= set(upstream[:100]), f"{topic}: beyond the first page"
        print(f"{topic}: {len(duplicated)} sessions re-emitted after the stop")
