"""The HTTP client of the Glance Activity Service (JSON convention, one aiohttp session).

This module decides, in one place, what each upstream answer means: data, a transient
fault worth retrying, a fatal authentication failure, or an unknown web method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from poller import metrics
from poller.errors import AuthenticationFailed, RetriableUpstreamError, UnknownOperation
from poller.glance.dates import to_request
from poller.glance.paging import Paginator, RepeatedPageToken, Window
from poller.glance.records import SessionPage, answer_d, read_session_page
from poller.logs import get_logger
from poller.retry import retrying
from poller.settings import GlanceSettings, Partner, RetrySettings

if TYPE_CHECKING:
    from poller._fastpath import Builder

log = get_logger(__name__)
T = TypeVar("T")


def _as_is(d: Any) -> Any:
    return d


SERVICE_PATH = "/services/activityservice.asmx"
COMPLETED_SESSIONS = "PartnerCompletedSessions"
SESSION_COUNTS = "PartnerSessionCounts"
# Answers at least this large (listing pages) are read in a worker thread.
READ_IN_THREAD_BYTES = 64 * 1024


def upstream_tls(glance: GlanceSettings) -> ssl.SSLContext | bool:
    """Verification on by default; a private CA replaces the system's; off only by choice."""
    if not glance.verify_tls:
        return False
    if glance.ca_file is not None:
        return ssl.create_default_context(cafile=str(glance.ca_file))
    return True


@dataclass
class ServerClock:
    """Upstream's notion of now, from the ``Date`` header of its latest answer.

    Windows end at the server's time rather than ours: a skewed host clock can then neither
    scan the future (and skip what starts there later) nor lag behind.
    """

    latest: datetime | None = None
    # When (host monotonic time) ``latest`` was read: an old reading must be refreshed.
    observed_at: float = 0.0

    def observe(self, header: str | None) -> datetime | None:
        """Take in one answer's ``Date``; returns it (None when absent or unreadable)."""
        if not header:
            return None
        try:
            moment = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        # Concurrent answers can arrive out of order: an older one must not move now back.
        if self.latest is None or moment >= self.latest:
            self.latest = moment
        self.observed_at = time.monotonic()
        return moment

    def age(self) -> float:
        return time.monotonic() - self.observed_at if self.latest is not None else float("inf")


def _retry_after(header: str | None, server_now: datetime | None) -> float | None:
    if not header:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
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
    ) -> None:
        self._http = http
        self._settings = settings
        self._partner = partner
        self._retry = retry
        self.clock = ServerClock()
        # The event builder's native fast path, if any: listings are read and their records
        # rendered with it (the builder then only joins the parts).
        self.native: Builder | None = None

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
        outcome = "error"
        try:
            async with self._http.post(
                url,
                data=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout),
            ) as response:
                served_at = self.clock.observe(response.headers.get("Date"))
                payload = await response.read()
                outcome = f"{response.status // 100}xx"
                if response.status >= 400 and response.headers.get("jsonerror") == "true":
                    outcome = "fault"
                self._check_answer(operation, response, payload)
                if len(payload) < READ_IN_THREAD_BYTES:
                    return read(operation, payload), served_at
                # A listing page is read beside the event loop: the native reader releases
                # the GIL while it parses, so the loop goes on producing the previous page.
                return await asyncio.to_thread(read, operation, payload), served_at
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

    def _check_answer(
        self, operation: str, response: aiohttp.ClientResponse, payload: bytes
    ) -> None:
        """Raises what an unsuccessful answer means; returns for a successful one."""
        status = response.status
        if status in (429, 503):
            delay = _retry_after(response.headers.get("Retry-After"), self.clock.latest)
            raise RetriableUpstreamError(
                "throttled", f"{operation}: HTTP {status}", retry_after=delay
            )
        if status in (401, 403):
            raise AuthenticationFailed(self._partner.id, f"HTTP {status}")
        if status >= 400:
            message, exception_type = _fault_message(payload)
            if "Authentication" in exception_type or message == "Invalid partnerId or apiKey":
                raise AuthenticationFailed(self._partner.id, message or exception_type)
            if message.startswith("Unknown web method"):
                raise UnknownOperation(operation)
            detail = f"{operation}: HTTP {status}" + (f" {message[:200]}" if message else "")
            raise RetriableUpstreamError("fault" if message else f"http_{status}", detail)

    async def server_now(
        self, max_age: float = 1.0, *, later_than: datetime | None = None
    ) -> datetime:
        """Upstream's current time: the latest ``Date`` header, refreshed with one small
        counts call when it is older than ``max_age`` seconds, or when (in whole seconds) it
        is no later than ``later_than``. Without the refresh, ticks that make no other call
        would keep seeing the same instant and never move on."""
        latest = self.clock.latest
        if (
            latest is None
            or self.clock.age() > max_age
            or (later_than is not None and latest.replace(microsecond=0) <= later_than)
        ):
            local = datetime.now(UTC)
            await self.session_counts(Window(local - timedelta(minutes=1), local), status="A")
        return self.clock.latest or datetime.now(UTC)

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
            functools.partial(read_session_page, request_token=token, native=self.native),
        )
        return dataclasses.replace(page, served_at=served_at)
