"""The HTTP client of the Glance Activity Service (JSON convention, one aiohttp session).

This module decides, in one place, what each upstream answer means: data, a transient
fault worth retrying, a fatal authentication failure, or an unknown web method.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import orjson

from poller import metrics
from poller.errors import (
    AuthenticationFailed,
    RetriableUpstreamError,
    UnknownOperation,
    UpstreamMisconfigured,
)
from poller.glance.dates import to_request
from poller.glance.paging import Paginator, RepeatedPageToken
from poller.glance.records import SessionPage, answer_d, parse_session_page
from poller.logs import excerpt, get_logger
from poller.retry import retrying
from poller.settings import GlanceSettings, Partner, RetrySettings
from poller.window import Window

log = get_logger(__name__)
T = TypeVar("T")
# Held around each attempt of a call (the backfill's concurrency limiter: ``poller.limiter``).
Gate = Callable[[], AbstractAsyncContextManager[object]]


def _as_is(d: Any) -> Any:
    return d


SERVICE_PATH = "/services/activityservice.asmx"
COMPLETED_SESSIONS = "PartnerCompletedSessions"
SESSION_COUNTS = "PartnerSessionCounts"
# Read at most this much of an answer at a time, so the cap holds whatever upstream claims.
_CHUNK = 256 * 1024


# The upstream calls one partner can have in flight at once: two pages of a scan (one read, the
# next fetched meanwhile) for each of two streams, a count, and room for a backfill's windows.
CALLS_PER_PARTNER = 8


def upstream_tls(glance: GlanceSettings) -> ssl.SSLContext | bool:
    """Verification on by default; a private CA replaces the system's; off only by choice."""
    if not glance.verify_tls:
        return False
    if glance.ca_file is not None:
        return ssl.create_default_context(cafile=str(glance.ca_file))
    return True


def upstream_connector(glance: GlanceSettings, partners: int) -> aiohttp.TCPConnector:
    """The connection pool every partner's client shares, large enough that no partner's call
    waits for a connection another partner holds (aiohttp's default is 100 in all)."""
    return aiohttp.TCPConnector(
        ssl=upstream_tls(glance), limit=max(100, CALLS_PER_PARTNER * partners)
    )


# What the service answers a wrong apiKey or an unknown partnerId with (API page §1): the
# key is rejected at once. Any other fault typed as an authentication failure may be the
# service's own trouble (an SSPI or TLS handshake to its back end) and is retried, until every
# answer has said so for DOUBT_FOR seconds and DOUBT_ANSWERS answers: then it is the key too.
KEY_REJECTED = "Invalid partnerId or apiKey"
DOUBT_FOR = 60.0
DOUBT_ANSWERS = 3


@dataclass(slots=True)
class CredentialDoubt:
    """Answers in a row that were authentication faults naming no key, since when."""

    since: float
    answers: int = 1

    def settled(self, now: float) -> bool:
        return self.answers >= DOUBT_ANSWERS and now - self.since >= DOUBT_FOR


# Readings this far apart (seconds) tell whether upstream's clock keeps pace with the host's.
PACE_SPAN = 5.0
# A clock that keeps pace is carried forward this long (seconds) without a call.
CARRY_FOR = 60.0
# How far (seconds) an answer's Date may stray from what the believed reading and the host's
# time since make possible before it is in doubt: whole-second dates, jitter between nodes.
STRAY = 5.0


@dataclass(slots=True, frozen=True)
class Reading:
    """One answer's ``Date``, when it was read and when its request was sent (host monotonic)."""

    moment: datetime
    at: float
    asked: float


@dataclass
class ServerClock:
    """Upstream's notion of now, from the ``Date`` headers of its answers, trusted only
    within ``tolerance`` seconds of the host's clock.

    Windows end at the server's time rather than ours: a host clock skewed by less than the
    tolerance can then neither scan the future (and skip what starts there later) nor lag
    behind. Beyond the tolerance the host clock bounds it (one warning, a metric): one answer
    dated 2099 must not carry a cursor into the future.

    An answer dated beyond where upstream's clock can have got to since the believed reading,
    or behind it, is not believed alone: one node of a farm with a fast clock would carry the
    scan into upstream's future, and what ends there would be left to the sweep. The next
    answer asked after it was read settles it: one that strays the same way confirms the move
    (a clock set by hand, an emulator's fast clock), one that does not refutes it. Any answer
    read meanwhile that agrees with the belief refutes it too.
    """

    tolerance: float = 300.0
    latest: datetime | None = None
    # When (host monotonic time) ``latest`` was read: an old reading must be refreshed.
    observed_at: float = 0.0
    bounded: bool = field(default=False, repr=False)
    # Whether upstream's clock advanced as the host's did between two readings PACE_SPAN apart.
    keeps_pace: bool = False
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)
    _pace_from: tuple[datetime, float] | None = field(default=None, repr=False)
    # When the request behind ``latest`` was sent: upstream served it no earlier.
    _latest_asked: float = field(default=0.0, repr=False)
    _doubt: Reading | None = field(default=None, repr=False)

    def observe(self, header: str | None, asked_at: float | None = None) -> datetime | None:
        """Take in one answer's ``Date`` (its request sent at ``asked_at``, host monotonic;
        None: just now); returns it, bounded (None when absent/unreadable)."""
        if not header:
            return None
        try:
            moment = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = self.bound(moment.astimezone(UTC))
        at = self.monotonic()
        self._take(Reading(moment, at, at if asked_at is None else asked_at))
        return moment

    @property
    def in_doubt(self) -> bool:
        """Whether an answer strayed from the believed reading and awaits another."""
        return self._doubt is not None

    def _strays(self, reading: Reading) -> int:
        """+1 beyond where upstream can have got to since ``latest``, -1 behind it (asked
        after it was read, so served after it), else 0."""
        assert self.latest is not None
        reach = reading.at - self._latest_asked + STRAY
        if reading.moment > self.latest + timedelta(seconds=reach):
            return 1
        behind = reading.moment < self.latest - timedelta(seconds=STRAY)
        return -1 if behind and reading.asked >= self.observed_at else 0

    def _take(self, reading: Reading) -> None:
        if self.latest is None:
            self._believe(reading)
            return
        doubt = self._doubt
        way = self._strays(reading)
        # Settled by an answer asked after it was read; refuted by any that agrees with the
        # belief (in a farm with one fast node, another's answer read in between).
        if doubt is not None and (reading.asked >= doubt.at or not way):
            self._doubt = None
            if way and way == self._strays(doubt):
                later = reading if reading.moment >= doubt.moment or way < 0 else doubt
                self._believe(later)
                return
        if way:
            # Answers asked before the one in doubt came back cannot settle it; the later-read
            # of two strays waits.
            self._doubt = reading
        elif reading.moment >= self.latest:
            # Concurrent answers can arrive out of order: an older one must not move now back.
            self._believe(reading)

    def _believe(self, reading: Reading) -> None:
        self._check_pace(reading.moment, reading.at)
        self.latest = reading.moment
        self.observed_at = reading.at
        self._latest_asked = reading.asked

    def _check_pace(self, moment: datetime, at: float) -> None:
        if self._pace_from is None:
            self._pace_from = (moment, at)
            return
        then, then_at = self._pace_from
        elapsed = at - then_at
        if elapsed < PACE_SPAN:
            return
        # Whole-second dates and answers' own latency: two seconds either way is at pace. A
        # clock that jumped (set by hand, an emulator's faster time) is not trusted to run on.
        self.keeps_pace = abs((moment - then).total_seconds() - elapsed) <= 2.0
        self._pace_from = (moment, at)

    def bound(self, moment: datetime) -> datetime:
        host = datetime.now(UTC)
        skew = (moment - host).total_seconds()
        metrics.UPSTREAM_CLOCK_SKEW.set(skew)
        if abs(skew) <= self.tolerance:
            if self.bounded:
                log.info("upstream's clock is within the tolerance again", skew_seconds=skew)
            self.bounded = False
            return moment
        metrics.UPSTREAM_CLOCK_BOUNDED.inc()
        if not self.bounded:
            log.warning(
                "upstream's Date is too far from the host clock; the host clock bounds it "
                "(check the host's and the service's time, or glance.clock_tolerance)",
                skew_seconds=round(skew),
                tolerance_seconds=self.tolerance,
            )
        self.bounded = True
        limit = timedelta(seconds=self.tolerance)
        return host + limit if skew > 0 else host - limit

    def now(self) -> datetime | None:
        """The latest reading (carried forward when the clock keeps pace), never beyond the
        host clock plus the tolerance."""
        if self.latest is None:
            return None
        moment = self.latest
        if self.keeps_pace:
            moment += timedelta(seconds=self.age())
        ceiling = datetime.now(UTC) + timedelta(seconds=self.tolerance)
        return min(moment, ceiling)

    def age(self) -> float:
        """Seconds since ``latest`` was read (asked only once there is one)."""
        return self.monotonic() - self.observed_at

    def fresh(self, max_age: float) -> bool:
        """Whether ``now()`` can be had without asking: a recent reading, or one carried
        forward for at most ``CARRY_FOR`` seconds."""
        if self.latest is None or self._doubt is not None:
            return False
        return self.age() <= (CARRY_FOR if self.keeps_pace else max_age)


def _retry_after(header: str | None, server_now: datetime | None) -> float | None:
    if not header:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    reference = server_now or datetime.now(UTC)
    return max(0.0, (moment - reference).total_seconds())


def _fault_message(body: bytes) -> tuple[str, str]:
    try:
        fault = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(fault, dict):
        return "", ""
    return str(fault.get("Message") or ""), str(fault.get("ExceptionType") or "")


class GlanceClient:
    """Calls for one partner; the aiohttp session is shared by every partner's client."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        settings: GlanceSettings,
        partner: Partner,
        retry: RetrySettings,
        gate: Gate | None = None,
    ) -> None:
        self._http = http
        self._gate: Gate = gate or contextlib.nullcontext
        self._settings = settings
        self._partner = partner
        self._retry = retry
        self.clock = ServerClock(settings.clock_tolerance)
        self._max_answer = settings.answer_cap()
        self._doubt: CredentialDoubt | None = None

    @property
    def partner_id(self) -> int:
        return self._partner.id

    async def call(
        self, operation: str, params: dict[str, Any], shape: Callable[[Any], T] = _as_is
    ) -> T:
        """One web method, retried per the house policy; returns ``shape(d)``.

        ``shape`` checks the answer inside the attempt, so a wrong-shaped ``d`` is retried
        like any other transient fault.
        """
        return (
            await self._call_served(operation, params, lambda op, body: shape(answer_d(op, body)))
        )[0]

    async def _call_served(
        self, operation: str, params: dict[str, Any], read: Callable[[str, bytes], T]
    ) -> tuple[T, datetime | None]:
        """``read`` of the body of a successful answer, inside the attempt (what it raises is
        retried), with the time upstream served the answer (its ``Date``)."""

        def note_retry(error: BaseException, delay: float, attempt: int) -> None:
            reason = getattr(error, "reason", "unknown")
            metrics.RETRIES.labels(str(self._partner.id), "upstream", reason).inc()
            # Routine: debug only; a tick that fails after its retries is logged by the loop.
            log.debug("retrying", operation=operation, reason=reason, delay=round(delay, 2))

        async for attempt in retrying(self._retry, (RetriableUpstreamError,), note_retry):
            with attempt:
                async with self._gate():
                    return await self._call_once(operation, params, read)
        raise AssertionError("unreachable: retrying re-raises the last error")

    async def _call_once(
        self, operation: str, params: dict[str, Any], read: Callable[[str, bytes], T]
    ) -> tuple[T, datetime | None]:
        url = f"{self._settings.base_url}{SERVICE_PATH}/{operation}"
        body = orjson.dumps(
            {"partnerId": self._partner.id, "apiKey": self._partner.api_key.get_secret_value()}
            | params
        )
        started = time.perf_counter()
        asked = self.clock.monotonic()
        outcome = "error"
        try:
            async with self._http.post(
                url,
                data=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout),
                # Never: a redirect would re-send the key to wherever Location points.
                allow_redirects=False,
            ) as response:
                served_at = self.clock.observe(response.headers.get("Date"), asked)
                outcome = f"{response.status // 100}xx"
                if 300 <= response.status < 400:
                    raise self._redirected(operation, response)
                payload = await self._read_capped(operation, response)
                if response.status >= 400 and response.headers.get("jsonerror") == "true":
                    outcome = "fault"
                self._check_answer(operation, response, payload)
                return read(operation, payload), served_at
        except RetriableUpstreamError as exc:
            if exc.reason == "too_large":
                outcome = "too_large"
            raise
        except TimeoutError:
            outcome = "timeout"
            raise RetriableUpstreamError(
                "timeout", f"{operation}: no answer within {self._settings.request_timeout:g}s"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            outcome = "truncated"
            raise RetriableUpstreamError("truncated", f"{operation}: {exc}") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            outcome = "tls"
            # Retried like any transient fault (a certificate can be renewed); /readyz says so.
            raise RetriableUpstreamError(
                "tls",
                f"{operation}: the service's certificate could not be verified "
                f"({exc.certificate_error}); if it is signed by a private CA set "
                "glance.ca_file to that CA's PEM bundle",
            ) from None
        except aiohttp.ClientSSLError as exc:
            outcome = "tls"
            raise RetriableUpstreamError(
                "tls", f"{operation}: TLS handshake failed: {exc.os_error}"
            ) from None
        except aiohttp.ClientError as exc:
            outcome = "connection"
            # The exception text names the host and the URL path, never the request body.
            raise RetriableUpstreamError(
                "connection", f"{operation}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            metrics.UPSTREAM_REQUESTS.labels(str(self._partner.id), operation, outcome).inc()
            metrics.UPSTREAM_LATENCY.labels(operation).observe(time.perf_counter() - started)

    async def _read_capped(self, operation: str, response: aiohttp.ClientResponse) -> bytes:
        """The body, or a retriable fault once it passes the cap: memory stays bounded
        whatever upstream sends or claims to send."""
        cap = self._max_answer
        too_large = RetriableUpstreamError(
            "too_large",
            f"{operation}: the answer is larger than {cap} bytes (glance.max_answer_bytes)",
        )
        if (response.content_length or 0) > cap:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.content.read(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _redirected(
        self, operation: str, response: aiohttp.ClientResponse
    ) -> UpstreamMisconfigured:
        location = response.headers.get("Location", "")
        shown = excerpt(location, 200).encode("ascii", "backslashreplace").decode()
        return UpstreamMisconfigured(
            self._partner.id,
            f"{operation}: the service answered HTTP {response.status}, redirecting to "
            f"{shown!r}; redirects are never followed (the API key must not leave the "
            "configured host): set glance.base_url to the service's real address",
        )

    def _check_answer(
        self, operation: str, response: aiohttp.ClientResponse, payload: bytes
    ) -> None:
        """Raises what an unsuccessful answer means; returns for a successful one."""
        status = response.status
        # Only an unbroken run of authentication faults keeps the doubt: any other answer ends it.
        doubt, self._doubt = self._doubt, None
        if status in (429, 503):
            delay = _retry_after(response.headers.get("Retry-After"), self.clock.latest)
            raise RetriableUpstreamError(
                "throttled", f"{operation}: HTTP {status}", retry_after=delay
            )
        if status in (401, 403):
            raise AuthenticationFailed(self._partner.id, f"HTTP {status}")
        if status >= 400:
            message, exception_type = _fault_message(payload)
            if message == KEY_REJECTED:
                raise AuthenticationFailed(self._partner.id, message)
            if "Authentication" in exception_type:
                self._doubt_credentials(operation, message or exception_type, doubt)
            if message.startswith("Unknown web method"):
                raise UnknownOperation(operation)
            detail = f"{operation}: HTTP {status}" + (
                f" {excerpt(message, 200)}" if message else ""
            )
            raise RetriableUpstreamError("fault" if message else f"http_{status}", detail)

    def _doubt_credentials(
        self, operation: str, reason: str, doubt: CredentialDoubt | None
    ) -> None:
        now = self.clock.monotonic()
        if doubt is None:
            doubt = CredentialDoubt(now)
        else:
            doubt.answers += 1
        if doubt.settled(now):
            raise AuthenticationFailed(self._partner.id, excerpt(reason, 200))
        self._doubt = doubt
        raise RetriableUpstreamError(
            "authentication",
            f"{operation}: an authentication fault that names no key ({excerpt(reason, 200)}); "
            f"retried, and taken as rejected credentials if every answer says so for "
            f"{DOUBT_FOR:g}s",
        )

    async def server_now(
        self, max_age: float = 1.0, *, later_than: datetime | None = None
    ) -> datetime:
        """Upstream's current time: the latest ``Date`` header (carried forward while its
        clock keeps pace with ours), refreshed with one small counts call when it is older
        than ``max_age`` seconds, or when (in whole seconds) it is no later than
        ``later_than``, or when an answer's Date strayed and awaits another. Without the
        refresh, ticks that make no other call would keep seeing the same instant and never
        move on."""
        latest = self.clock.now()
        if (
            latest is None
            or not self.clock.fresh(max_age)
            or (later_than is not None and latest.replace(microsecond=0) <= later_than)
        ):
            await self._ask_time()
            if self.clock.in_doubt:
                await self._ask_time()  # one more answer settles a Date that strayed
        return self.clock.now() or datetime.now(UTC)

    async def _ask_time(self) -> None:
        local = datetime.now(UTC)
        await self.session_counts(Window(local - timedelta(minutes=1), local), status="A")

    async def session_counts(
        self, window: Window, *, status: str, kind: str = "", shape: Callable[[Any], T] = _as_is
    ) -> T:
        return await self.call(
            SESSION_COUNTS,
            {
                "type": kind,
                "status": status,
                "startRange": to_request(window.start),
                "endRange": to_request(window.end),
            },
            shape,
        )

    async def session_pages(
        self, operation: str, window: Window, page_size: int, start_token: int = 0
    ) -> AsyncGenerator[SessionPage, None]:
        """Pages of one window, following ``nextId`` from ``start_token``.

        The next page is fetched while the caller handles the current one (publishes it,
        waits for Kafka, commits), so upstream and Kafka latencies overlap; the caller still
        sees pages strictly in order. Raises RepeatedPageToken after yielding the page that
        repeated a token.
        """
        paginator = Paginator(start_token)
        pending: asyncio.Task[SessionPage] | None = self._fetch_page(
            operation, window, page_size, paginator.token
        )
        try:
            while pending is not None:
                page = await pending
                pending = None
                repeated: RepeatedPageToken | None = None
                try:
                    paginator.advance(page.next_token)
                except RepeatedPageToken as exc:
                    repeated = exc
                if not paginator.finished:
                    pending = self._fetch_page(operation, window, page_size, paginator.token)
                yield page
                del page  # the caller's now: not kept here while the next one is awaited
                if repeated is not None:
                    raise repeated
        finally:
            if pending is not None:
                pending.cancel()
                # Retrieve its outcome so an abandoned prefetch never logs as unhandled.
                await asyncio.gather(pending, return_exceptions=True)

    def _fetch_page(
        self, operation: str, window: Window, page_size: int, token: int
    ) -> asyncio.Task[SessionPage]:
        return asyncio.create_task(self._page(operation, window, page_size, token))

    async def _page(
        self, operation: str, window: Window, page_size: int, token: int
    ) -> SessionPage:
        page, served_at = await self._call_served(
            operation,
            {
                "startRange": to_request(window.start),
                "endRange": to_request(window.end),
                "sessionKey": "",
                "nResults": page_size,
                "nextId": token,
            },
            lambda op, body: parse_session_page(answer_d(op, body), token, page_size),
        )
        return dataclasses.replace(page, served_at=served_at)
