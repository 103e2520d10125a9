"""Page tokens: the ``nextId`` a listing answers with, followed until it says 0."""

from __future__ import annotations


class RepeatedPageToken(Exception):
    """Upstream handed back a ``nextId`` it had already given: following it would loop."""

    def __init__(self, token: int) -> None:
        self.token = token
        super().__init__(f"nextId {token} was already followed in this scan")


class Paginator:
    """Follows ``nextId`` tokens: 0 ends the scan; a token seen before is refused."""

    def __init__(self, start_token: int = 0) -> None:
        self.token = start_token
        self.finished = False
        self._seen = {start_token} if start_token else set()

    def advance(self, next_token: int) -> None:
        if next_token == 0:
            self.finished = True
            return
        if next_token in self._seen:
            self.finished = True
            raise RepeatedPageToken(next_token)
        self._seen.add(next_token)
        self.token = next_token
