"""Synthetic, seeded, deterministic Glance traffic.

Two ways to make sessions, both drawing every attribute from a seeded ``random.Random`` so the
same seed always gives the same sessions:

* ``generate_bulk``: N sessions with start times spread over a past (or future) range, each
  with a planned end; those that end before the clock are already complete.
* ``LiveTraffic``: a steady Poisson stream of sessions starting as the emulator clock advances,
  materialised lazily whenever a request arrives, so what exists is a function of (seed, clock).
  Starting the stream some hours in the past gives a freshly started poller a backlog of
  completed sessions to find.

What the sessions look like (the API page, section 4, and the seed documents): all three
types, mostly clean closes with some unclean ones and a few of every other terminal status,
one to four guests with the right guest types, ISP-looking addresses, locations with some null
fields, personal fields only sometimes, and durations from seconds to many hours (a heavy
tail, capped).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Generic, TypeVar

from poller.emulator.gc_pause import gc_paused
from poller.emulator.sessions import GuestSpec, Session, SessionSpec, build_session

T = TypeVar("T")

AllocateId = Callable[[], int]


class _Weighted(Generic[T]):
    """A weighted choice, with the cumulative weights computed once.

    (``random.choices`` does the same but builds lists on every call; generating 200,000
    sessions for a benchmark makes millions of draws.)
    """

    def __init__(self, pairs: Sequence[tuple[T, float]]) -> None:
        self.values = [value for value, _weight in pairs]
        self.cumulative = list(accumulate(weight for _value, weight in pairs))
        self.total = self.cumulative[-1]

    def draw(self, rng: random.Random) -> T:
        return self.values[bisect_right(self.cumulative, rng.random() * self.total)]


def _between(rng: random.Random, low: int, high: int) -> int:
    """An integer in ``[low, high]``; a cheaper ``randint``."""
    return low + int(rng.random() * (high - low + 1))


SESSION_TYPE_MIX = _Weighted([("C", 60), ("G", 30), ("V", 10)])
# Mostly clean closes, some unclean ones, a few of every other way a session ends.
FINAL_STATUS_MIX = _Weighted(
    [("C", 700), ("X", 130), ("Q", 50), ("T", 40), ("D", 30), ("E", 20), ("K", 15), ("U", 15)]
)
SCREEN_SIZES = _Weighted(
    [
        ((1920, 1080), 40),
        ((1366, 768), 12),
        ((1440, 900), 10),
        ((1536, 864), 10),
        ((2560, 1440), 10),
        ((1680, 1050), 6),
        ((1280, 1024), 6),
        ((3840, 2160), 6),
    ]
)
# 4:3, 11:9 and the odd 16:9; 640x480 and up usually means a misconfigured webcam.
VIDEO_SIZES = _Weighted(
    [
        ((176, 144), 22),
        ((320, 240), 33),
        ((352, 288), 25),
        ((160, 120), 5),
        ((640, 480), 8),
        ((704, 576), 2),
        ((1280, 720), 5),
    ]
)
EXTRA_GUESTS = _Weighted([(0, 70), (1, 20), (2, 10)])
LOCATIONS = _Weighted(
    [
        (("Newburyport", "MA", "US"), 8),
        (("Alexandria", "VA", "US"), 8),
        (("Seekonk", "MA", "US"), 5),
        (("Boston", "MA", "US"), 10),
        (("Austin", "TX", "US"), 8),
        (("Denver", "CO", "US"), 6),
        (("Chicago", "IL", "US"), 8),
        (("Toronto", "ON", "CA"), 5),
        (("London", "ENG", "GB"), 5),
        (("Berlin", "BE", "DE"), 3),
        (("Sydney", "NSW", "AU"), 3),
        (("Bengaluru", "KA", "IN"), 3),
        ((None, None, "US"), 10),  # the seed sample's shape: country only
        ((None, None, None), 4),
    ]
)
FIRST_NAMES = ("Greta", "Sam", "Priya", "Jonas", "Maria", "Wei", "Tom", "Aisha", "Luis", "Ines")
LAST_NAMES = ("Guest", "Smith", "Patel", "Berg", "Garcia", "Chen", "Walsh", "Khan", "Silva")
CLIENT_VERSIONS = ("iOs 3", "Android 5.2", "Chrome 124", "Windows 6.1.4", "Mac 6.0.2", "Edge 120")
PUBLIC_FIRST_OCTETS = (23, 50, 64, 66, 72, 81, 98, 108, 173, 184, 199, 203, 208, 209, 212)

GUEST_TYPES = {
    "C": ("visitor", "agent", "agent", "agent"),
    "G": ("host", "guest", "guest", "guest"),
    "V": ("host", "guest", "guest", "guest"),
}

NO_ROLES = ("", "", "", "")  # a session type nobody told us about

SHORT_DURATION = (10, 180)  # "a healthy share": events flow within seconds in a demo
MEDIAN_DURATION = 8 * 60
LONG_DURATION_FLOOR = 30 * 60


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """The knobs of generated traffic."""

    min_duration: int = 10
    max_duration: int = 12 * 3600
    users: int = 8

    def __post_init__(self) -> None:
        if self.min_duration < 0 or self.max_duration < self.min_duration:
            raise ValueError(
                f"durations need 0 <= min ({self.min_duration}) <= max ({self.max_duration})"
            )
        if self.users < 1:
            raise ValueError("traffic needs at least one user")


def user_roster(count: int) -> list[tuple[str, str]]:
    """``(userName, partnerUserId)`` of a partner's agents, as in the seed sample."""
    roster = [("agent.company.glance.net", "puidValue")]
    roster.extend((f"agent{n}.company.glance.net", f"puid-{n:04d}") for n in range(2, count + 1))
    return roster[:count]


class SessionMaker:
    """Draws realistic sessions for one partner."""

    def __init__(self, partner_id: int, profile: TrafficProfile) -> None:
        self.partner_id = partner_id
        self.profile = profile
        roster = user_roster(profile.users)
        # A few agents are much busier than the rest.
        self._users = _Weighted([(user, 1 / rank) for rank, user in enumerate(roster, 1)])

    def make(
        self,
        rng: random.Random,
        session_id: int,
        start: int,
        *,
        end: int | None = None,
        open_ended: bool = False,
        final_status: str | None = None,
        session_type: str | None = None,
    ) -> SessionSpec:
        """A complete spec; what is not given is drawn (an end unless ``open_ended``)."""
        session_type = session_type or SESSION_TYPE_MIX.draw(rng)
        final_status = final_status or FINAL_STATUS_MIX.draw(rng)
        if open_ended:
            end = None
        elif end is None:
            end = start + draw_duration(rng, final_status, self.profile)
        user_name, partner_user_id = self._users.draw(rng)
        width, height = _draw_size(rng, session_type)
        # Used to place guests inside the session; an open-ended session gets a nominal one.
        span = 600 if end is None else end - start
        guests = self._draw_guests(rng, session_type, final_status, start, end, span)
        is_reverse = session_type == "G" and rng.random() < 0.08
        return SessionSpec(
            partner_id=self.partner_id,
            id=session_id,
            user_name=user_name,
            partner_user_id=partner_user_id,
            type=session_type,
            start=start,
            end=end,
            final_status=final_status,
            key=_draw_key(rng, session_type),
            width=width,
            height=height,
            kbytes=guests[0].kbytes,
            is_reverse=is_reverse,
            guests=guests,
            live_status="L" if session_type == "G" and rng.random() < 0.03 else None,
        )

    def _draw_guests(
        self,
        rng: random.Random,
        session_type: str,
        final_status: str,
        start: int,
        end: int | None,
        span: int,
    ) -> list[GuestSpec]:
        count = _draw_guest_count(rng, final_status)
        video_without_roles = session_type == "V" and rng.random() < 0.7
        # Sometimes everyone sits behind one address (the seed sample: a test from one office).
        shared_site = (_draw_ip(rng), LOCATIONS.draw(rng)) if rng.random() < 0.1 else None
        guests = []
        for index in range(count):
            joined, left = _draw_presence(rng, index, session_type, start, end, span)
            roles = GUEST_TYPES.get(session_type, NO_ROLES)
            guest_type = "" if video_without_roles else roles[index]
            if rng.random() < 0.03:
                guest_type = ""
            ip, (city, region, country) = shared_site or (_draw_ip(rng), LOCATIONS.draw(rng))
            guest = GuestSpec(
                type=guest_type,
                joined=joined,
                left=left,
                final_status=_draw_guest_status(rng, final_status),
                kbytes=_draw_kbytes(rng, session_type, index, (left or end or start) - joined),
                ip=ip,
                location={"city": city, "region": region, "countryCode": country},
            )
            if guest_type in ("visitor", "guest", "") and rng.random() < 0.2:
                _add_contact_details(rng, guest)
            _add_optional_fields(rng, guest, final_status, index)
            guests.append(guest)
        return guests


def draw_duration(rng: random.Random, final_status: str, profile: TrafficProfile) -> int:
    """Seconds, by how the session ended; the general case has a heavy tail."""
    if final_status == "Q":  # quit while waiting
        seconds = _log_uniform(rng, 5, 600)
    elif final_status == "T":  # timed out while waiting
        seconds = rng.uniform(120, 900)
    elif final_status == "E":
        seconds = _log_uniform(rng, 1, 120)
    elif final_status == "D":
        seconds = _log_uniform(rng, 5, 600)
    else:
        draw = rng.random()
        if draw < 0.40:
            seconds = _log_uniform(rng, *SHORT_DURATION)
        elif draw < 0.80:
            seconds = rng.lognormvariate(math.log(MEDIAN_DURATION), 0.7)
        else:
            seconds = LONG_DURATION_FLOOR * rng.paretovariate(1.1)
    return int(min(max(seconds, profile.min_duration), profile.max_duration))


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _draw_size(rng: random.Random, session_type: str) -> tuple[int, int]:
    if session_type == "G":
        return SCREEN_SIZES.draw(rng)
    if session_type == "V":
        return VIDEO_SIZES.draw(rng)
    return 0, 0  # cobrowse


def _draw_key(rng: random.Random, session_type: str) -> str:
    if session_type == "V":
        return f"9900V{_between(rng, 10000, 99999)}"
    if rng.random() < 0.85:
        return str(_between(rng, 1000, 9999))
    return str(_between(rng, 100000, 999999))


def _draw_guest_count(rng: random.Random, final_status: str) -> int:
    if final_status in ("Q", "T"):  # nobody else ever joined
        return 1
    if final_status in ("D", "E", "K", "U"):
        return rng.choice((1, 2, 2, 3))
    return 2 + EXTRA_GUESTS.draw(rng)


def _draw_presence(
    rng: random.Random, index: int, session_type: str, start: int, end: int | None, span: int
) -> tuple[int, int | None]:
    """When a guest joins and (if before the end) leaves."""
    if index == 0:
        # The visitor opens a cobrowse before the agent joins, which starts the session (the
        # samples show guests starting before their session); other types start with the host.
        joined = (
            start - _between(rng, 0, 30) if session_type == "C" else start + _between(rng, 0, 3)
        )
        return joined, None
    if index == 1:
        joined = start + (0 if session_type == "C" else _between(rng, 0, min(30, span // 4)))
        return joined, None
    joined = start + _between(rng, 0, max(0, span // 2))
    if end is not None and end - joined > 1 and rng.random() < 0.5:
        return joined, joined + _between(rng, 1, end - joined - 1)
    return joined, None


def _draw_guest_status(rng: random.Random, final_status: str) -> str | None:
    """None: the guest ends with the session's status."""
    if final_status == "C" and rng.random() < 0.15:
        return "X"  # the seed sample: a clean session whose guests closed their browsers
    return None


def _draw_kbytes(rng: random.Random, session_type: str, index: int, seconds: int) -> int:
    if session_type == "V":
        return 0
    per_second = rng.uniform(2, 40) if session_type == "G" and index == 0 else rng.uniform(0.1, 4)
    return int(max(0, seconds) * per_second)


def _draw_ip(rng: random.Random) -> str:
    first = PUBLIC_FIRST_OCTETS[int(rng.random() * len(PUBLIC_FIRST_OCTETS))]
    rest = rng.getrandbits(24)
    return (
        f"{first}.{(rest >> 16) % 254 + 1}.{(rest >> 8 & 255) % 254 + 1}.{(rest & 255) % 254 + 1}"
    )


def _add_contact_details(rng: random.Random, guest: GuestSpec) -> None:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    guest.name = f"{first} {last}"
    guest.email = f"{first.lower()}.{last.lower()}@example.com"
    guest.phone = f"{_between(rng, 201, 989)}-555-{_between(rng, 0, 9999):04d}"


def _add_optional_fields(
    rng: random.Random, guest: GuestSpec, final_status: str, index: int
) -> None:
    if final_status == "E" and index == 0:
        guest.extra["error"] = "Cobrowse asset service unreachable"
    elif final_status == "X" and rng.random() < 0.3:
        guest.extra["error"] = "Connection lost"
    elif rng.random() < 0.04:
        guest.extra["error"] = "Session ended by other side"
    if rng.random() < 0.3:
        guest.extra["clientVersion"] = rng.choice(CLIENT_VERSIONS)
        guest.extra["protocolVersion"] = rng.choice((3, 4))


def generate_bulk(
    partner_id: int,
    count: int,
    start_from: int,
    start_before: int,
    *,
    seed: int | str,
    profile: TrafficProfile,
    allocate_id: AllocateId,
) -> list[Session]:
    """``count`` sessions starting in ``[start_from, start_before)``, ids ascending with starts."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if start_before <= start_from:
        raise ValueError("the start range is empty")
    rng = random.Random(seed)
    maker = SessionMaker(partner_id, profile)
    starts = sorted(rng.randrange(start_from, start_before) for _ in range(count))
    with gc_paused():
        return [build_session(maker.make(rng, allocate_id(), start)) for start in starts]


class LiveTraffic:
    """Sessions starting at a steady average rate as emulated time passes."""

    # However far the clock jumps, one catch-up makes at most this many sessions (the stream
    # skips ahead rather than freeze the emulator for minutes).
    MAX_CATCH_UP = 200_000

    def __init__(
        self,
        partner_id: int,
        rate_per_minute: float,
        origin: float,
        *,
        seed: int | str,
        profile: TrafficProfile,
    ) -> None:
        if not rate_per_minute > 0:
            raise ValueError("live traffic needs a rate > 0 sessions per minute")
        self.partner_id = partner_id
        self.rate_per_minute = rate_per_minute
        self._mean_gap = 60.0 / rate_per_minute
        self._rng = random.Random(seed)
        self._maker = SessionMaker(partner_id, profile)
        self._next_start = origin + self._gap()

    def restart_at(self, origin: float) -> None:
        """Forget the stream before ``origin`` (after an admin reset)."""
        self._next_start = origin + self._gap()

    def due(self, now: float, allocate_id: AllocateId) -> list[Session]:
        """The sessions that have started by ``now`` and were not made yet, in start order."""
        backlog = (now - self._next_start) / self._mean_gap
        if backlog > self.MAX_CATCH_UP:
            self._next_start = now - self.MAX_CATCH_UP * self._mean_gap
        made = []
        with gc_paused():
            while self._next_start <= now:
                start = math.floor(self._next_start)
                made.append(build_session(self._maker.make(self._rng, allocate_id(), start)))
                self._next_start += self._gap()
        return made

    def _gap(self) -> float:
        return self._rng.expovariate(1.0 / self._mean_gap)
