# The native fast path (native/src/lib.rs); see poller/glance/records.py for its use.
from datetime import datetime

from poller.events import Event, Header, Headers

# Built without optimisations (cargo's debug profile).
DEBUG_BUILD: bool

# Event, the completed and started topics, then the constant headers: spec version, source,
# completed type, started type, content type (EventBuilder passes its own).
EventShape = tuple[type[Event], str, str, Header, Header, Header, Header, Header]

class Session:
    """A session record in the documented shape, checked and rendered in Rust."""

    @property
    def id(self) -> int: ...
    @property
    def start(self) -> datetime: ...
    @property
    def wire(self) -> bytes: ...

class Builder:
    def __init__(
        self, partner_id: int, pii_mode: str, salt: bytes, namespace: bytes, shape: EventShape
    ) -> None: ...
    def event(
        self, session: Session, completed: bool, observed_active: bool | None
    ) -> Event | None: ...

def read_listing(
    payload: bytes, builder: Builder
) -> tuple[int, list[tuple[str | None, str | None, list[Session | bytes]]]] | None: ...

class RecordBatch:
    """A Kafka record batch (format v2, uncompressed), as aiokafka's BatchBuilder writes it."""

    def __init__(self, batch_size: int) -> None: ...
    def extend(self, events: list[Event], start: int = 0, timestamp: int | None = None) -> int: ...
    def append(
        self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Headers
    ) -> bool | None: ...
    def close(self) -> None: ...
    def closed(self) -> bool: ...
    def record_count(self) -> int: ...
    def size(self) -> int: ...
    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None: ...
    def _build(self) -> bytes: ...

def partition_index(key: bytes, partitions: int) -> int:
    """Kafka's murmur2 partition choice: an index into the topic's sorted partitions."""
