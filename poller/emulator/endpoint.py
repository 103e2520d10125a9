"""The ASMX endpoint: one call, from the HTTP request to the HTTP response.

``POST /services/activityservice.asmx/{Operation}`` with a JSON parameters object. In order:
unknown operations are refused as ASP.NET refuses them; the fault plan is consulted; a fault
that replaces the answer is sent instead of it; otherwise the operation runs against the store
at the emulator's "now" and its answer is rendered (with any record mutations applied to the
served copy), possibly after a delay, possibly cut short.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextvars import ContextVar
from typing import Any

import orjson
from aiohttp import web

from poller.emulator.behaviour import partner_of
from poller.emulator.faults import (
    DEFAULT_REDIRECT_ORIGIN,
    DELAYS,
    CallFaults,
    FaultSpec,
    damaged_copy,
)
from poller.emulator.operations import (
    ARGUMENT_EXCEPTION,
    INVALID_OPERATION_EXCEPTION,
    LISTING_OPERATIONS,
    OPERATIONS,
    ServiceFault,
    SessionPage,
    group_by_user,
    unknown_method,
)
from poller.emulator.sessions import Record, Session
from poller.emulator.state import EmulatorState
from poller.emulator.wire import (
    bad_shape_response,
    fault_response,
    hang,
    invalid_json_response,
    redirect_response,
    reset_connection,
    send_truncated,
    service_body,
    service_response,
    throttled_response,
)

SERVICE_PATH = "/services/activityservice.asmx"
STATE_KEY = web.AppKey("emulator_state", EmulatorState)
# Seconds the Date header of this request's answer is off by (app.py stamps the Date).
DATE_SKEW_KEY = web.RequestKey("emulator_date_skew", float)
# Injected faults that stand for the service's own answer (and so take its latency).
SERVICE_FAULTS = frozenset({"error500", "invalid_json", "bad_shape"})
_NEXT_ID_MARK = "__emulator_next_id__"
# The injected fault of the request being handled, for the request log line.
injected_fault: ContextVar[str | None] = ContextVar("injected_fault", default=None)


async def handle_call(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    operation = request.match_info["operation"]
    if operation not in OPERATIONS:
        state.stats.count(operation, "unknown_method")
        fault = unknown_method(operation)
        return fault_response(fault.message, fault.exception_type)

    raw = await request.read()
    behaviour = state.behaviour
    partner = partner_of(raw, state.partners)
    if not behaviour.admit(partner):
        status = behaviour.refusal()
        injected_fault.set(f"limit{status}")
        state.stats.count(operation, "throttled", f"limit{status}")
        return throttled_response(status, behaviour.retry_after, "seconds", state.now())
    try:
        return await _serve(request, state, operation, raw)
    finally:
        behaviour.release(partner)


async def _serve(
    request: web.Request, state: EmulatorState, operation: str, raw: bytes
) -> web.StreamResponse:
    """One admitted call: faults decided, the answer made, the latency waited."""
    serves_records = operation in LISTING_OPERATIONS
    faults = state.faults.draw(operation, serves_records=serves_records)
    skew = faults.date_skew()
    if skew:
        request[DATE_SKEW_KEY] = skew
    for modifier in faults.modifiers:
        state.stats.note(operation, modifier.kind)
    transport = faults.transport
    if transport is not None:
        injected_fault.set(transport.kind)
        replacement = _replacement(state, transport, request)
        if replacement is not None:
            state.stats.count(operation, "fault", transport.kind)
            if transport.kind in SERVICE_FAULTS:  # the service itself answers these
                await state.behaviour.wait(0, state.stopping)
            return replacement
        if transport.kind == "reset":
            state.stats.count(operation, "fault", "reset")
            return await reset_connection(request)

    if transport is not None and transport.kind in DELAYS:
        try:
            client_waited = await hang(request, transport.delay_seconds(), state.stopping)
        except asyncio.CancelledError:  # aiohttp cancels handlers whose client went away
            state.stats.count(operation, "client_gone", transport.kind)
            raise
        if not client_waited:
            state.stats.count(operation, "client_gone", transport.kind)
            return web.Response(status=499)  # nobody is listening any more

    response, labels, records = _answer(state, operation, request, raw, faults)
    await state.behaviour.wait(records, state.stopping)
    if transport is not None and transport.kind == "truncate":
        state.stats.count(operation, "fault", "truncate")
        return await send_truncated(request, response)
    if transport is not None:
        labels.append(transport.kind)
    state.stats.count(operation, *labels, records=records)
    return response


def _replacement(
    state: EmulatorState, fault: FaultSpec, request: web.Request
) -> web.Response | None:
    """The answer a transport fault sends instead of the real one, if it replaces it."""
    if fault.kind == "error500":
        return fault_response(
            fault.message
            or "Timeout expired.  The timeout period elapsed prior to "
            "completion of the operation or the server is not responding.",
            fault.exception_type or "System.Data.SqlClient.SqlException",
        )
    if fault.kind in ("throttle429", "throttle503"):
        status = 429 if fault.kind == "throttle429" else 503
        return throttled_response(status, fault.retry_after, fault.retry_after_form, state.now())
    if fault.kind == "invalid_json":
        return invalid_json_response()
    if fault.kind == "bad_shape":
        return bad_shape_response(state.faults.next_bad_shape(fault))
    if fault.kind == "redirect":
        location = fault.location or DEFAULT_REDIRECT_ORIGIN + request.path
        return redirect_response(fault.status, location)
    return None


def _answer(
    state: EmulatorState,
    operation: str,
    request: web.Request,
    raw: bytes,
    faults: CallFaults,
) -> tuple[web.Response, list[str], int]:
    """Run the operation; the response, the statistics labels and the records served."""
    state.catch_up()
    now = state.now()
    try:
        params = _parameters(request.content_type, raw)
        result = state.service.call(operation, params, now, extra_records=faults.extra_records)
    except ServiceFault as fault:
        return fault_response(fault.message, fault.exception_type), [fault.outcome], 0
    if not isinstance(result, SessionPage):
        ms_dates = state.date_format == "ms"
        body = _padded(service_body(result, ms_dates=ms_dates), faults.pad_bytes)
        return service_response(body), ["ok"], 0
    if faults.extra_records:
        _fill_oversized(result, faults.extra_records)
    renderer = _PageRenderer(state, operation, now, faults)
    payload = group_by_user(result, renderer.render)
    bad_next_id = faults.modifier("bad_next_id")
    if bad_next_id is not None:
        payload["nextId"] = _NEXT_ID_MARK
    body = service_body(payload, ms_dates=renderer.used_ms_dates)
    if bad_next_id is not None:
        # No JSON library writes an integer beyond 64 bits: put it in as text.
        body = body.replace(b'"' + _NEXT_ID_MARK.encode() + b'"', str(bad_next_id.next_id).encode())
    body = _padded(body, faults.pad_bytes)
    labels = ["ok"]
    if renderer.applied:
        labels.append("mutated")
        labels.extend(renderer.applied)
    return service_response(body), labels, len(result.sessions)


def _fill_oversized(page: SessionPage, extra: int) -> None:
    """Make the page hold ``extra`` records more than asked for: the range's next sessions were
    taken already; when it has too few, records of the page are served twice."""
    wanted = page.limit + extra
    served = list(page.sessions)
    while served and len(page.sessions) < wanted:
        page.sessions.append(served[(len(page.sessions) - len(served)) % len(served)])


def _padded(body: bytes, size: int) -> bytes:
    """``body`` followed by JSON whitespace up to ``size`` bytes (still valid JSON)."""
    return body + b" " * (size - len(body)) if size > len(body) else body


def _parameters(content_type: str, raw: bytes) -> dict[str, Any]:
    """The JSON parameters object, refused the way ASMX refuses what it cannot bind."""
    if content_type != "application/json":
        raise ServiceFault(
            f"Request format is invalid: {content_type}.", INVALID_OPERATION_EXCEPTION
        )
    if not raw.strip():
        return {}
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError:
        snippet = raw[:40].decode("utf-8", "replace")
        raise ServiceFault(f"Invalid JSON primitive: {snippet}.", ARGUMENT_EXCEPTION) from None
    if not isinstance(params, dict):
        raise ServiceFault(
            "Cannot convert object of type 'System.Object[]' to type "
            "'System.Collections.Generic.IDictionary`2[System.String,System.Object]'",
            INVALID_OPERATION_EXCEPTION,
        )
    return params


class _PageRenderer:
    """Renders a page's records, applying the call's and the persistent record mutations."""

    def __init__(
        self, state: EmulatorState, operation: str, now: float, faults: CallFaults
    ) -> None:
        self._plan = state.faults
        self._operation = operation
        self._now = now
        self._faults = faults
        self.used_ms_dates = state.date_format == "ms" or faults.ms_dates
        self.applied: Counter[str] = Counter()

    def render(self, session: Session, position: int) -> Record:
        specs = self._faults.mutations_at(position) + self._plan.persistent_mutations(
            session.id, self._operation
        )
        if not specs:
            return session.render(self._now, ms_dates=self.used_ms_dates)
        kinds = {spec.kind for spec in specs}
        self.applied.update(kinds)
        ms_dates = self.used_ms_dates or "ms_dates" in kinds
        self.used_ms_dates = self.used_ms_dates or ms_dates
        record = session.render(self._now, ms_dates=ms_dates)
        damage = [spec for spec in specs if spec.kind != "ms_dates"]
        return damaged_copy(record, damage) if damage else record
