# The native fast path (native/src/lib.rs); see poller/glance/records.py for its use.
from datetime import datetime

class Session:
    """A session record in the documented shape, checked and rendered in Rust."""

    @property
    def id(self) -> int: ...
    @property
    def start(self) -> datetime: ...
    @property
    def wire(self) -> bytes: ...

class Builder:
    def __init__(self, partner_id: int, pii_mode: str, salt: bytes, namespace: bytes) -> None: ...
    def event(
        self, session: Session, completed: bool, observed_active: bool | None
    ) -> tuple[bytes, str, bytes] | None: ...

def read_listing(
    payload: bytes, builder: Builder
) -> tuple[int, list[tuple[str | None, str | None, list[Session | bytes]]]] | None: ...
