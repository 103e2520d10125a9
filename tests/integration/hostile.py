"""A small hostile Activity Service for tests: real HTTP on loopback, in a thread, answering
each call with whatever the test scripts (a redirect, a huge body, a date from 2099...)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
from aiohttp import web

Answer = Callable[[str, dict[str, Any]], web.StreamResponse]


def listing(sessions: list[dict[str, Any]], next_id: Any = 0) -> dict[str, Any]:
    return {
        "d": {
            "__type": "ActivityService+groupSessions",
            "nextId": next_id,
            "users": [{"userName": "agent", "partnerUserId": "puid", "sessions": sessions}],
        }
    }


def session(session_id: int, start: datetime, duration: int = 60) -> dict[str, Any]:
    return {
        "id": session_id,
        "type": "C",
        "status": "C",
        "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": str(session_id),
        "duration": duration,
        "guests": [],
    }


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def json_answer(body: Any, *, date: datetime | None = None, status: int = 200) -> web.Response:
    headers = {"Date": http_date(date or datetime.now(UTC))}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def counts_or(answer: Answer) -> Answer:
    """Counts calls answered plainly (zero rows), everything else by ``answer``."""

    def route(operation: str, params: dict[str, Any]) -> web.StreamResponse:
        if operation.startswith("PartnerSessionCounts"):
            return json_answer({"d": []})
        return answer(operation, params)

    return route


class HostileServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.path.rsplit("/", 1)[-1]
        raw = await request.read()
        try:
            params = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            params = {"raw": raw.decode(errors="replace")}
        self.requests.append((request.path, params))
        return self.answer(operation, params)

    @contextmanager
    def running(self) -> Iterator[HostileServer]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        runner: list[web.AppRunner] = []

        async def start() -> None:
            app = web.Application(client_max_size=1 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            app_runner = web.AppRunner(app, access_log=None)
            await app_runner.setup()
            site = web.TCPSite(app_runner, "127.0.0.1", 0)
            await site.start()
            port = app_runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            runner.append(app_runner)
            started.set()

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        started.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
