"""What the native extension does for the producer is what aiokafka does: record batches
(``poller._fastpath.RecordBatch``) byte for byte the batches aiokafka's own builder writes,
split at the same records, and keys on the partitions aiokafka's partitioner picks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from poller._fastpath import RecordBatch, partition_index
from poller.events import Event
from poller.health import Health
from poller.publisher import KafkaPublisher
from poller.settings import KafkaSettings, RetrySettings

NOW_MS = 1_795_990_000_000

optional_bytes = st.none() | st.binary(max_size=300)
headers = st.lists(
    st.tuples(st.text(max_size=20), optional_bytes),
    max_size=8,
)
records = st.lists(
    st.tuples(optional_bytes, optional_bytes, headers),
    min_size=1,
    max_size=60,
)


def aiokafka_batches(
    batch_size: int, items: list[tuple[Any, ...]], timestamps: list[int]
) -> list[tuple[int, bytes]]:
    """(records taken, bytes) per batch, as aiokafka's builder splits and writes them."""
    batches: list[tuple[int, bytes]] = []
    builder, taken = BatchBuilder(batch_size, 0), 0
    for (key, value, header_list), timestamp in zip(items, timestamps, strict=True):
        if builder.append(timestamp=timestamp, key=key, value=value, headers=header_list) is None:
            builder._set_producer_state(9, 1, len(batches) * 100)
            batches.append((taken, bytes(builder._build())))
            builder, taken = BatchBuilder(batch_size, 0), 0
            assert builder.append(timestamp=timestamp, key=key, value=value, headers=header_list), (
                "an empty batch takes any record"
            )
        taken += 1
    builder._set_producer_state(9, 1, len(batches) * 100)
    batches.append((taken, bytes(builder._build())))
    return batches


@settings(max_examples=300, deadline=None)
@given(
    items=records,
    batch_size=st.integers(min_value=61, max_value=4096),
    steps=st.lists(st.integers(min_value=0, max_value=3000), min_size=60, max_size=60),
)
def test_appended_records_are_aiokafkas_bytes(
    items: list[tuple[Any, ...]], batch_size: int, steps: list[int]
) -> None:
    # Timestamps that go back and forth: deltas may be negative, as the clock may step.
    timestamps = [NOW_MS + step - 1500 for step in steps[: len(items)]]
    expected = aiokafka_batches(batch_size, items, timestamps)
    got: list[tuple[int, bytes]] = []
    batch = RecordBatch(batch_size)
    for (key, value, header_list), timestamp in zip(items, timestamps, strict=True):
        if batch.append(timestamp=timestamp, key=key, value=value, headers=header_list) is None:
            assert batch.closed(), "a full batch closes"
            batch._set_producer_state(9, 1, len(got) * 100)
            got.append((batch.record_count(), batch._build()))
            batch = RecordBatch(batch_size)
            assert batch.append(timestamp=timestamp, key=key, value=value, headers=header_list)
    batch._set_producer_state(9, 1, len(got) * 100)
    got.append((batch.record_count(), batch._build()))
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(items=records, batch_size=st.integers(min_value=61, max_value=4096))
def test_extend_takes_events_until_the_batch_is_full(
    items: list[tuple[Any, ...]], batch_size: int
) -> None:
    """``extend`` stamps a call's events with one time, as aiokafka would stamp records
    appended within the same millisecond."""
    events = [Event("topic", key, value, header_list) for key, value, header_list in items]
    expected = aiokafka_batches(batch_size, items, [NOW_MS] * len(items))
    got: list[tuple[int, bytes]] = []
    start = 0
    while start < len(events):
        batch = RecordBatch(batch_size)
        end = batch.extend(events, start, NOW_MS)
        assert end > start, "an empty batch takes any event"
        assert batch.closed() == (end < len(events))
        assert batch.extend(events, end, NOW_MS) == end, "a closed batch takes nothing"
        batch._set_producer_state(9, 1, len(got) * 100)
        got.append((end - start, batch._build()))
        start = end
    assert got == expected


def test_a_batch_reads_back_with_a_valid_crc() -> None:
    events = [
        Event("t", str(i).encode(), b"v" * i, [("ce_id", str(i).encode()), ("empty", b"")])
        for i in range(50)
    ]
    batch = RecordBatch(1 << 20)
    assert batch.extend(events) == len(events)
    batch._set_producer_state(12, 3, 7)
    read = DefaultRecordBatch(batch._build())
    assert read.validate_crc()
    assert (read.producer_id, read.producer_epoch, read.base_sequence) == (12, 3, 7)
    assert [(r.offset, r.key, r.value, r.headers) for r in read] == [
        (i, e.key, e.value, e.headers) for i, e in enumerate(events)
    ]


def test_a_new_producer_state_rebuilds_the_batch() -> None:
    """aiokafka sets the producer state, builds, and may set it again for a retry."""
    batch = RecordBatch(1 << 20)
    batch.extend([Event("t", b"k", b"v", [])])
    batch._set_producer_state(1, 0, 0)
    first = batch._build()
    assert batch._build() is first, "built once"
    batch._set_producer_state(1, 0, 5)
    assert DefaultRecordBatch(batch._build()).base_sequence == 5
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=[]) is None, "closed"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event("t", b"k", "text", []), "bytes or None"),  # type: ignore[arg-type]
        (Event("t", "key", b"v", []), "bytes or None"),  # type: ignore[arg-type]
        (Event("t", b"k", b"v", [("h", "text")]), "bytes or None"),  # type: ignore[list-item]
        (Event("t", b"k", b"v", [("h",)]), "(name, value)"),  # type: ignore[list-item]
        (("t", b"k"), "(topic, key, value, headers"),
    ],
)
def test_a_wrongly_typed_event_is_refused_and_leaves_the_batch_as_it_was(
    event: Any, message: str
) -> None:
    batch = RecordBatch(1 << 20)
    batch.extend([Event("t", b"k", b"v", [])])
    size = batch.size()
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        batch.extend([event])
    assert (batch.size(), batch.record_count(), batch.closed()) == (size, 1, False)


@pytest.mark.parametrize(
    ("compression", "native"), [("none", True), ("gzip", False), ("lz4", False)]
)
async def test_the_publisher_writes_batches_natively_unless_they_compress(
    compression: Any, native: bool
) -> None:
    class Producer:
        def create_batch(self) -> BatchBuilder:
            return BatchBuilder(16_384, 0)

    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers="127.0.0.1:9", compression_type=compression),
        RetrySettings(max_attempts=1),
        stopping=asyncio.Event(),
        health=Health(),
        retry_forever=False,
    )
    batch = publisher._new_batch(Producer())
    assert isinstance(batch, RecordBatch) == native


@settings(max_examples=500, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=1000))
def test_keys_go_to_the_partition_aiokafka_picks(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_index(key, partitions) == DefaultPartitioner()(key, every, every)


def test_the_publisher_partitions_as_aiokafka_does() -> None:
    publisher = KafkaPublisher(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        RetrySettings(max_attempts=1),
        stopping=asyncio.Event(),
        health=Health(),
        retry_forever=False,
    )
    every = [0, 1, 2, 5, 7]
    keys = [str(60_000_000 + n).encode() for n in range(200)]
    assert [publisher._partition(key, every) for key in keys] == [
        DefaultPartitioner()(key, every, every) for key in keys
    ]
    # Without a key, any partition (aiokafka picks one at random).
    assert {publisher._partition(None, every) for _ in range(200)} <= set(every)
    with pytest.raises(ValueError, match="at least one partition"):
        partition_index(b"k", 0)
