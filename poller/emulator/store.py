"""Where the emulator keeps its sessions: per partner, indexed for the questions the service asks.

Every operation selects on a *start-time* range (or an end-time range for the "ending" counts)
and pages in *id* order. Both are answered from sorted arrays with bisect, so the cost of a page
depends on the page, not on how many sessions the partner holds:

* sessions are kept sorted by ``(start, id)``; a start range is a contiguous slice;
* when ids ascend with start times (the normal case: Glance assigns ids as sessions start, and
  the generator does the same), that slice is already in id order and ``nextId`` is one more
  bisect into it;
* otherwise (hand-made data sets, admin-added sessions with chosen ids), the slice is sorted by
  id once and cached until the partner's sessions change;
* planned end times have their own sorted index.

Visibility (started? ended?) is not indexed: it depends on the clock, and is checked while
walking the slice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter

from poller.emulator.gc_pause import gc_paused
from poller.emulator.sessions import Session

# Adding more than this many sessions at once appends and re-sorts instead of inserting one by one.
_BULK_ADD = 256
# Id-ordered views of start ranges kept for the non-ascending case (one per scan in progress).
_ID_ORDER_CACHE_SIZE = 16

_by_id_key = attrgetter("id")


class PartnerSessions:
    """The sessions of one partner."""

    def __init__(self, partner_id: int) -> None:
        self.partner_id = partner_id
        self.clear()

    def clear(self) -> None:
        self._by_id: dict[int, Session] = {}
        # Three parallel arrays sorted by (start, id).
        self._starts: list[int] = []
        self._ids: list[int] = []
        self._sessions: list[Session] = []
        # True while self._ids is ascending too, i.e. ids follow start times.
        self._ids_ascending = True
        # (end, id) of every session with an end, sorted.
        self._end_keys: list[tuple[int, int]] = []
        self._version = 0
        self._id_order_cache: dict[tuple[int, int], tuple[int, list[int], list[Session]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, session_id: int) -> Session | None:
        return self._by_id.get(session_id)

    def add(self, sessions: Iterable[Session]) -> None:
        """Add sessions; one with the id of a session already held replaces it."""
        batch = list(sessions)
        for session in batch:
            if session.partner_id != self.partner_id:
                raise ValueError(
                    f"session {session.id} belongs to partner {session.partner_id}, "
                    f"not {self.partner_id}"
                )
            if session.id in self._by_id:
                self._remove(self._by_id[session.id])
        if len(batch) > _BULK_ADD:
            with gc_paused():
                self._add_in_bulk(batch)
        else:
            for session in batch:
                self._insert(session)
        self._version += 1

    def remove(self, session_id: int) -> Session | None:
        session = self._by_id.get(session_id)
        if session is not None:
            self._remove(session)
            self._version += 1
        return session

    def finish(self, session: Session, end: int, status: str) -> None:
        """End a session at ``end`` (it keeps its place: only the end index moves)."""
        if session.end is not None:
            self._end_keys.pop(bisect_left(self._end_keys, (session.end, session.id)))
        session.finish(end, status)
        insort(self._end_keys, (end, session.id))

    def page(
        self,
        start_from: float,
        start_before: float,
        next_id: int,
        limit: int,
        accept: Callable[[Session], bool],
    ) -> tuple[list[Session], int]:
        """The first ``limit`` accepted sessions with a start in ``[start_from, start_before)``
        and an id >= ``next_id``, in id order, and the id of the next accepted one (0: none)."""
        ids, sessions, first, stop = self._in_id_order(start_from, start_before)
        found: list[Session] = []
        for index in range(bisect_left(ids, next_id, first, stop), stop):
            session = sessions[index]
            if accept(session):
                if len(found) == limit:
                    return found, session.id
                found.append(session)
        return found, 0

    def started_in(self, start_from: float, start_before: float) -> list[Session]:
        """Sessions with a start in ``[start_from, start_before)``, in start order."""
        first = bisect_left(self._starts, start_from)
        stop = bisect_left(self._starts, start_before)
        return self._sessions[first:stop]

    def ending_in(self, end_from: float, end_before: float) -> Iterator[Session]:
        """Sessions with a (planned) end in ``[end_from, end_before)``, in end order."""
        first = bisect_left(self._end_keys, (end_from,))
        stop = bisect_left(self._end_keys, (end_before,))
        for _end, session_id in self._end_keys[first:stop]:
            yield self._by_id[session_id]

    def in_id_order(self) -> list[Session]:
        if self._ids_ascending:
            return list(self._sessions)
        return sorted(self._by_id.values(), key=_by_id_key)

    def _in_id_order(
        self, start_from: float, start_before: float
    ) -> tuple[list[int], list[Session], int, int]:
        """Id-ordered arrays holding exactly the sessions of a start range between two indices."""
        first = bisect_left(self._starts, start_from)
        stop = bisect_left(self._starts, start_before)
        if self._ids_ascending:
            return self._ids, self._sessions, first, stop
        cached = self._id_order_cache.get((first, stop))
        if cached is None or cached[0] != self._version:
            ordered = sorted(self._sessions[first:stop], key=_by_id_key)
            if len(self._id_order_cache) >= _ID_ORDER_CACHE_SIZE:
                self._id_order_cache.clear()
            cached = (self._version, [s.id for s in ordered], ordered)
            self._id_order_cache[(first, stop)] = cached
        _version, ids, sessions = cached
        return ids, sessions, 0, len(sessions)

    def _insert(self, session: Session) -> None:
        first = bisect_left(self._starts, session.start)
        stop = bisect_right(self._starts, session.start, first)
        index = bisect_left(self._ids, session.id, first, stop)
        self._starts.insert(index, session.start)
        self._ids.insert(index, session.id)
        self._sessions.insert(index, session)
        self._by_id[session.id] = session
        if self._ids_ascending and (
            (index > 0 and self._ids[index - 1] > session.id)
            or (index + 1 < len(self._ids) and self._ids[index + 1] < session.id)
        ):
            self._ids_ascending = False
        if session.end is not None:
            insort(self._end_keys, (session.end, session.id))

    def _add_in_bulk(self, batch: list[Session]) -> None:
        for session in batch:
            self._by_id[session.id] = session
        ordered = sorted([*self._sessions, *batch], key=lambda s: (s.start, s.id))
        self._sessions = ordered
        self._starts = [s.start for s in ordered]
        self._ids = [s.id for s in ordered]
        self._ids_ascending = all(a < b for a, b in zip(self._ids, self._ids[1:], strict=False))
        self._end_keys.extend((s.end, s.id) for s in batch if s.end is not None)
        self._end_keys.sort()

    def _remove(self, session: Session) -> None:
        first = bisect_left(self._starts, session.start)
        stop = bisect_right(self._starts, session.start, first)
        index = bisect_left(self._ids, session.id, first, stop)
        del self._starts[index], self._ids[index], self._sessions[index]
        del self._by_id[session.id]
        if session.end is not None:
            self._end_keys.pop(bisect_left(self._end_keys, (session.end, session.id)))


class SessionStore:
    """All partners' sessions, and the id counter they share.

    Ids are never reused, not even after a reset: a poller that already emitted id N must not
    see a different session under that id.
    """

    def __init__(self, first_id: int = 60_000_001) -> None:
        self._partners: dict[int, PartnerSessions] = {}
        self._next_id = first_id

    def partner(self, partner_id: int) -> PartnerSessions:
        sessions = self._partners.get(partner_id)
        if sessions is None:
            sessions = self._partners[partner_id] = PartnerSessions(partner_id)
        return sessions

    def partner_ids(self) -> list[int]:
        return sorted(self._partners)

    def allocate_id(self) -> int:
        session_id = self._next_id
        self._next_id += 1
        return session_id

    def add(self, partner_id: int, sessions: Iterable[Session]) -> None:
        batch = list(sessions)
        self.partner(partner_id).add(batch)
        if batch:
            self._next_id = max(self._next_id, max(s.id for s in batch) + 1)

    def find(self, session_id: int) -> list[Session]:
        """Every session with this id (one per partner at most)."""
        found = (p.get(session_id) for p in self._partners.values())
        return [session for session in found if session is not None]

    def clear(self) -> None:
        for sessions in self._partners.values():
            sessions.clear()

    def __len__(self) -> int:
        return sum(len(p) for p in self._partners.values())
