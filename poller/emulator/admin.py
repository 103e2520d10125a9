"""The admin API: how tests, demos and benchmarks drive the emulator and ask what it holds.

JSON in, JSON out, no authentication (the emulator listens on loopback). Errors are
``{"error": message}`` with 400 (bad request), 404 (no such partner or session) or 409 (the
session is not in a state that allows it).

=====================================  ==========================================================
``GET /admin/health``                  ``{"ok": true}``
``GET|POST /admin/clock``              ``{"set"?: iso, "advance"?: s, "speed"?: x}`` ->
                                       ``{"now", "speed"}``
``GET /admin/sessions``                ``?partnerId&state=all|ended|active&fromId&limit&records``
                                       -> ``{"now", "sessions": [{"partnerId", "userName",
                                       "partnerUserId", "id", "type", "status", "startTime",
                                       "endTime", "started", "ended", "record"?}]}``
``POST /admin/sessions``               ``{"partnerId", "sessions": [...]}`` -> ``{"ids"}``
``POST /admin/sessions/{id}/end``      ``{"status"?}`` -> the session
``POST /admin/dataset``                a data set -> ``{"loaded"}``
``POST /admin/traffic``                ``{"partnerId", "count", ...}`` -> ``{"created", ...}``
``GET|POST|DELETE /admin/faults``      ``{"calls"?: [fault], "rate"?: {"p", "kinds"?, "seed"?,
                                       "operation"?, "params"?} | null}`` -> ``{"calls",
                                       "rate"}`` (``faults.FaultSpec.from_json``: the kinds and
                                       their fields)
``GET|POST /admin/service``            ``{"latency"?, "latencyPerRecord"?, "maxConcurrent"?,
                                       "throttle503Share"?, "retryAfter"?, "seed"?}`` (seconds or
                                       text such as ``"400ms"``) -> the same keys, in seconds
``GET|POST /admin/live``               ``{"rate": per minute}`` (0 stops live traffic) ->
                                       ``{"rate"}``
``GET /admin/stats``                   ``{"calls": {operation: {label: n}}, "partners": {id:
                                       {"calls", "admitted", "throttled", "inFlight",
                                       "peakConcurrent"}}, "allPartners": {the same, all
                                       partners together}}``
``POST /admin/stats/reset``            the same, emptied
``POST /admin/reset``                  forget sessions, faults and counters
``GET|POST /admin/partners``           ``{"partnerId", "apiKey"}`` -> ``{"partners"}``
=====================================  ==========================================================
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson
from aiohttp import web

from poller.emulator.behaviour import BehaviourError
from poller.emulator.dataset import DatasetError, load_dataset
from poller.emulator.dates import (
    DateFormatError,
    format_instant,
    format_iso,
    parse_request_date,
    to_timestamp,
)
from poller.emulator.faults import FaultRate, FaultSpec, FaultSpecError
from poller.emulator.gc_pause import gc_paused
from poller.emulator.sessions import (
    ACTIVE_STATUSES,
    GuestSpec,
    Session,
    build_session,
)
from poller.emulator.state import EmulatorState
from poller.emulator.store import PartnerSessions
from poller.emulator.traffic import (
    GUEST_TYPES,
    SessionMaker,
    TrafficProfile,
    generate_bulk,
)
from poller.emulator.wire import admin_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_STATES = ("all", "ended", "active")
_session_id = attrgetter("id")
# Keys of POST /admin/sessions entries that describe the session; any other key is a record
# field (documented or not) served as given.
_ADMIN_SESSION_KEYS = frozenset(
    {
        "id",
        "userName",
        "partnerUserId",
        "type",
        "startTime",
        "endTime",
        "status",
        "activeStatus",
        "guests",
    }
)
# Guest fields POST /admin/sessions reads; any other key of a guest is served as given.
_GUEST_KEYS = frozenset(
    {
        "type",
        "status",
        "startTime",
        "duration",
        "kbytes",
        "ip",
        "location",
        "name",
        "email",
        "phone",
    }
)


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def add_admin_routes(app: web.Application, state: EmulatorState) -> None:
    admin = AdminApi(state)
    routes = [
        ("GET", "/admin/health", admin.health),
        ("GET", "/admin/clock", admin.get_clock),
        ("POST", "/admin/clock", admin.set_clock),
        ("GET", "/admin/sessions", admin.list_sessions),
        ("POST", "/admin/sessions", admin.add_sessions),
        ("POST", "/admin/sessions/{id}/end", admin.end_session),
        ("POST", "/admin/dataset", admin.load_dataset),
        ("POST", "/admin/traffic", admin.add_traffic),
        ("GET", "/admin/faults", admin.get_faults),
        ("POST", "/admin/faults", admin.add_faults),
        ("DELETE", "/admin/faults", admin.clear_faults),
        ("GET", "/admin/stats", admin.get_stats),
        ("POST", "/admin/stats/reset", admin.reset_stats),
        ("POST", "/admin/reset", admin.reset),
        ("GET", "/admin/service", admin.get_service),
        ("POST", "/admin/service", admin.set_service),
        ("GET", "/admin/live", admin.get_live),
        ("POST", "/admin/live", admin.set_live),
        ("GET", "/admin/partners", admin.get_partners),
        ("POST", "/admin/partners", admin.add_partner),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _json_errors(handler))


def _json_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AdminError as error:
            return admin_response({"error": error.message}, status=error.status)

    return wrapped


class AdminApi:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def health(self, _request: web.Request) -> web.Response:
        return admin_response({"ok": True})

    # -- clock ---------------------------------------------------------------------------------

    async def get_clock(self, _request: web.Request) -> web.Response:
        return self._clock_view()

    async def set_clock(self, request: web.Request) -> web.Response:
        """``{"set": iso}``, ``{"advance": seconds}``, ``{"speed": x}`` (applied in that order)."""
        body = await _object_body(request)
        if not body.keys() & {"set", "advance", "speed"}:
            raise AdminError(400, "give one of 'set', 'advance' or 'speed'")
        clock = self.state.clock
        if "set" in body:
            clock.set(_instant(body, "set"))
        if "advance" in body:
            clock.advance(_number(body, "advance"))
        if "speed" in body:
            try:
                clock.set_speed(_number(body, "speed"))
            except ValueError as exc:
                raise AdminError(400, str(exc)) from exc
        return self._clock_view()

    def _clock_view(self) -> web.Response:
        clock = self.state.clock
        return admin_response({"now": format_instant(clock.timestamp()), "speed": clock.speed})

    # -- sessions ------------------------------------------------------------------------------

    async def list_sessions(self, request: web.Request) -> web.Response:
        """What the emulator holds, sorted by id.

        Query: ``partnerId`` (default all), ``state`` (all|ended|active), and for large
        stores ``fromId`` (ids >= it), ``limit`` and ``records=false`` (leave records out).
        """
        query = request.query
        wanted = query.get("state", "all")
        if wanted not in SESSION_STATES:
            raise AdminError(400, f"state is one of {list(SESSION_STATES)}")
        from_id = _query_int(query, "fromId", 0)
        limit = _query_int(query, "limit", -1)
        with_records = query.get("records", "true").lower() not in ("false", "0", "no")
        state = self.state
        state.catch_up()
        now = state.now()
        if "partnerId" in query:
            sessions = self._partner(_query_int(query, "partnerId", 0)).in_id_order()
        else:
            every = (state.store.partner(p).in_id_order() for p in state.store.partner_ids())
            sessions = sorted((s for group in every for s in group), key=_session_id)
        # Hundreds of thousands of small dicts, no cycles: see gc_pause.
        with gc_paused():
            views: list[dict[str, Any]] = []
            first = bisect_left(sessions, from_id, key=_session_id)
            for session in itertools.islice(sessions, first, None):
                if wanted != "all" and (
                    not session.has_started(now) or session.has_ended(now) != (wanted == "ended")
                ):
                    continue
                if len(views) == limit:
                    break
                views.append(_session_view(session, now, with_record=with_records))
            return admin_response({"now": format_instant(now), "sessions": views})

    async def add_sessions(self, request: web.Request) -> web.Response:
        """``{"partnerId", "sessions": [{"startTime", "endTime"?, ...}]}`` -> ``{"ids"}``."""
        body = await _object_body(request)
        partner_id = _integer(body, "partnerId")
        self._partner(partner_id)
        entries = body.get("sessions")
        if not isinstance(entries, list):
            raise AdminError(400, "sessions must be a list")
        built = [self._session_from_entry(partner_id, entry) for entry in entries]
        self.state.store.add(partner_id, built)
        return admin_response({"ids": [session.id for session in built]})

    async def end_session(self, request: web.Request) -> web.Response:
        """End a session that has started and not ended, now; ``{"status"?: "C"}``."""
        body = await _object_body(request, allow_empty=True)
        try:
            session_id = int(request.match_info["id"])
        except ValueError:
            raise AdminError(400, "a session id is an integer") from None
        status = body.get("status", "C")
        if not isinstance(status, str) or not status or status in ACTIVE_STATUSES:
            raise AdminError(400, "status must be a terminal status letter")
        state = self.state
        state.catch_up()
        found = state.store.find(session_id)
        if "partnerId" in body:
            found = [s for s in found if s.partner_id == body["partnerId"]]
        if not found:
            raise AdminError(404, f"no session {session_id}")
        if len(found) > 1:
            raise AdminError(409, f"several partners have a session {session_id}; give partnerId")
        session = found[0]
        now = state.now()
        if not session.has_started(now):
            raise AdminError(409, f"session {session_id} has not started yet")
        if session.has_ended(now):
            raise AdminError(409, f"session {session_id} has already ended")
        state.store.partner(session.partner_id).finish(session, math.floor(now), status)
        return admin_response(_session_view(session, now, with_record=True))

    async def load_dataset(self, request: web.Request) -> web.Response:
        """``?partnerId=N`` (default: the first partner), body: a data set -> ``{"loaded"}``."""
        state = self.state
        default_partner = min(state.partners) if state.partners else 0
        partner_id = _query_int(request.query, "partnerId", default_partner)
        self._partner(partner_id)
        raw = await request.read()
        try:
            sessions = load_dataset(raw, partner_id, state.store.allocate_id)
        except DatasetError as exc:
            raise AdminError(400, str(exc)) from exc
        state.store.add(partner_id, sessions)
        return admin_response({"loaded": len(sessions)})

    async def add_traffic(self, request: web.Request) -> web.Response:
        """``{"partnerId", "count", "from"?, "until"?, "minDuration"?, "maxDuration"?,
        "users"?, "seed"?}`` -> ``{"created", "firstId", "lastId"}``."""
        body = await _object_body(request)
        state = self.state
        partner_id = _integer(body, "partnerId")
        self._partner(partner_id)
        count = _integer(body, "count")
        now = state.now()
        until = to_timestamp(_instant(body, "until")) if "until" in body else now
        start = to_timestamp(_instant(body, "from")) if "from" in body else until - 3600
        base = state.profile
        try:
            profile = TrafficProfile(
                min_duration=_integer(body, "minDuration", base.min_duration),
                max_duration=_integer(body, "maxDuration", base.max_duration),
                users=_integer(body, "users", base.users),
            )
            seed = body.get("seed", state.next_traffic_seed())
            if not isinstance(seed, int | str) or isinstance(seed, bool):
                raise ValueError("seed is an integer or a string")
            sessions = generate_bulk(
                partner_id,
                count,
                math.ceil(start),
                math.ceil(until),
                seed=seed,
                profile=profile,
                allocate_id=state.store.allocate_id,
            )
        except ValueError as exc:
            raise AdminError(400, str(exc)) from exc
        state.store.add(partner_id, sessions)
        return admin_response(
            {
                "created": len(sessions),
                "firstId": sessions[0].id if sessions else None,
                "lastId": sessions[-1].id if sessions else None,
            }
        )

    def _session_from_entry(self, partner_id: int, entry: Any) -> Session:
        if not isinstance(entry, dict):
            raise AdminError(400, "each session is an object")
        state = self.state
        start = _seconds(entry, "startTime")
        end = None if entry.get("endTime") is None else _seconds(entry, "endTime")
        if end is not None and end < start:
            raise AdminError(400, "endTime is before startTime")
        status = entry.get("status", "C")
        if not isinstance(status, str) or not status or status in ACTIVE_STATUSES:
            raise AdminError(
                400, "status is the terminal letter served once ended (activeStatus: while active)"
            )
        active_status = entry.get("activeStatus")
        if active_status is not None and active_status not in ACTIVE_STATUSES:
            raise AdminError(400, "activeStatus is one of J, W, A, L")
        session_id = _integer(entry, "id", 0) or state.store.allocate_id()
        session_type = entry.get("type")
        if session_type is not None and not isinstance(session_type, str):
            raise AdminError(400, "type is a string")
        # Whatever is not given is drawn, reproducibly for a given id.
        rng = random.Random(f"{state.seed}/admin/{partner_id}/{session_id}")
        spec = SessionMaker(partner_id, state.profile).make(
            rng,
            session_id,
            start,
            end=end,
            open_ended=end is None,
            final_status=status,
            session_type=session_type or None,
        )
        spec.type = session_type if session_type is not None else spec.type
        spec.live_status = active_status
        spec.user_name = _text(entry, "userName", spec.user_name)
        spec.partner_user_id = _text(entry, "partnerUserId", spec.partner_user_id)
        if "guests" in entry:
            spec.guests = _guest_specs(entry["guests"], spec.type, start, rng)
        spec.extra = {k: v for k, v in entry.items() if k not in _ADMIN_SESSION_KEYS}
        return build_session(spec)

    # -- faults, counters, partners, reset -----------------------------------------------------

    async def get_faults(self, _request: web.Request) -> web.Response:
        return admin_response(self.state.faults.describe())

    async def add_faults(self, request: web.Request) -> web.Response:
        """``{"calls"?: [fault, ...], "rate"?: {"p", "kinds"?, "seed"?} | null}``."""
        body = await _object_body(request)
        calls = body.get("calls", [])
        if not isinstance(calls, list):
            raise AdminError(400, "calls must be a list")
        try:
            specs = [FaultSpec.from_json(call) for call in calls]
            rate = FaultRate.from_json(body["rate"]) if body.get("rate") is not None else None
        except FaultSpecError as exc:
            raise AdminError(400, str(exc)) from exc
        plan = self.state.faults
        for spec in specs:
            plan.add(spec)
        if "rate" in body:
            plan.rate = rate
        return admin_response(plan.describe())

    async def clear_faults(self, _request: web.Request) -> web.Response:
        self.state.faults.clear()
        return admin_response(self.state.faults.describe())

    async def get_stats(self, _request: web.Request) -> web.Response:
        return admin_response(self._stats())

    async def reset_stats(self, _request: web.Request) -> web.Response:
        self.state.stats.reset()
        self.state.behaviour.reset_load()
        return admin_response(self._stats())

    def _stats(self) -> dict[str, Any]:
        """``{"calls": {operation: {outcome or kind: n}}, "partners": {id: {"calls",
        "admitted", "throttled", "inFlight", "peakConcurrent"}}, "allPartners": {the same,
        every partner's requests together}}``."""
        behaviour = self.state.behaviour
        return {
            **self.state.stats.snapshot(),
            "partners": behaviour.load_snapshot(),
            "allPartners": behaviour.total.to_json(),
        }

    # -- service behaviour (latency, concurrency limit) and live traffic -----------------------

    async def get_service(self, _request: web.Request) -> web.Response:
        return admin_response(self.state.behaviour.to_json())

    async def set_service(self, request: web.Request) -> web.Response:
        """``{"latency"?, "latencyPerRecord"?, "maxConcurrent"?, "throttle503Share"?,
        "retryAfter"?, "seed"?}``: durations in seconds or as text ("400ms")."""
        body = await _object_body(request)
        try:
            self.state.behaviour.update(body)
        except BehaviourError as exc:
            raise AdminError(400, str(exc)) from exc
        return admin_response(self.state.behaviour.to_json())

    async def get_live(self, _request: web.Request) -> web.Response:
        return admin_response({"rate": self.state.live_rate})

    async def set_live(self, request: web.Request) -> web.Response:
        """``{"rate": sessions per minute of emulated time, per partner}`` (0 stops it)."""
        body = await _object_body(request)
        rate = _number(body, "rate")
        if not math.isfinite(rate) or rate < 0:
            raise AdminError(400, "rate must be a number >= 0")
        self.state.set_live_rate(rate)
        return admin_response({"rate": self.state.live_rate})

    async def reset(self, _request: web.Request) -> web.Response:
        self.state.reset()
        return admin_response({"ok": True})

    async def get_partners(self, _request: web.Request) -> web.Response:
        return admin_response({"partners": sorted(self.state.partners)})

    async def add_partner(self, request: web.Request) -> web.Response:
        """``{"partnerId": N, "apiKey": "..."}`` (an existing partner gets the new key)."""
        body = await _object_body(request)
        partner_id = _integer(body, "partnerId")
        api_key = body.get("apiKey")
        if not isinstance(api_key, str) or not api_key:
            raise AdminError(400, "apiKey must be a non-empty string")
        self.state.add_partner(partner_id, api_key)
        return admin_response({"partners": sorted(self.state.partners)})

    def _partner(self, partner_id: int) -> PartnerSessions:
        if partner_id not in self.state.partners:
            raise AdminError(404, f"no partner {partner_id}")
        return self.state.store.partner(partner_id)


def _session_view(session: Session, now: float, *, with_record: bool) -> dict[str, Any]:
    started = session.has_started(now)
    view: dict[str, Any] = {
        "partnerId": session.partner_id,
        "userName": session.user_name,
        "partnerUserId": session.partner_user_id,
        "id": session.id,
        "type": session.type,
        "status": session.status_at(now) if started else None,
        "startTime": format_iso(session.start),
        "endTime": None if session.end is None else format_iso(session.end),
        "started": started,
        "ended": session.has_ended(now),
    }
    if with_record:
        view["record"] = session.render(now) if started else None
    return view


def _guest_specs(value: Any, session_type: str, start: int, rng: random.Random) -> list[GuestSpec]:
    """Guests given to ``POST /admin/sessions``; missing fields get plausible values."""
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        raise AdminError(400, "guests must be a list of objects")
    roles = GUEST_TYPES.get(session_type, ("", "", "", ""))
    specs = []
    for index, given in enumerate(value):
        joined = _seconds(given, "startTime") if "startTime" in given else start
        status = given.get("status")
        final_status = status if isinstance(status, str) and status not in ACTIVE_STATUSES else None
        duration = given.get("duration")
        left = (
            joined + duration
            if final_status and isinstance(duration, int) and not isinstance(duration, bool)
            else None
        )
        octets = [rng.randint(1, 254) for _ in range(4)]
        location = given.get("location", {"city": None, "region": None, "countryCode": "US"})
        specs.append(
            GuestSpec(
                type=_text(given, "type", roles[min(index, len(roles) - 1)]),
                joined=joined,
                left=left,
                final_status=final_status,
                kbytes=_integer(given, "kbytes", 0),
                ip=given.get("ip", ".".join(map(str, octets))),
                location=location,
                name=given.get("name"),
                email=given.get("email"),
                phone=given.get("phone"),
                extra={k: v for k, v in given.items() if k not in _GUEST_KEYS},
            )
        )
    return specs


async def _object_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AdminError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise AdminError(400, "the body must be a JSON object")
    return body


def _integer(obj: dict[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdminError(400, f"{name} must be an integer")
    return value


def _number(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AdminError(400, f"{name} must be a number")
    return float(value)


def _text(obj: dict[str, Any], name: str, default: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        raise AdminError(400, f"{name} must be a string")
    return value


def _instant(obj: dict[str, Any], name: str) -> datetime:
    value = obj.get(name)
    if not isinstance(value, str):
        raise AdminError(400, f"{name} must be an ISO 8601 date")
    try:
        return parse_request_date(value)
    except DateFormatError as exc:
        raise AdminError(400, f"{name}: {exc}") from exc


def _seconds(obj: dict[str, Any], name: str) -> int:
    """A record instant: whole seconds (Glance records carry no fractions)."""
    return math.floor(to_timestamp(_instant(obj, name)))


def _query_int(query: Any, name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise AdminError(400, f"{name} must be an integer") from None
