# The native fast path (native/src/lib.rs); see poller/glance/records.py for its use.
from datetime import datetime

from poller.events import Event, Header

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
