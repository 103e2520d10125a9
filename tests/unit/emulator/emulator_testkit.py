"""What the emulator's tests share: constants, and a client for a running emulator."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from poller.emulator.state import EmulatorState

PARTNER_ID = 12345
API_KEY = "demo-api-key"
# A Friday in March, after the US switched to daylight time (EDT, UTC-4).
T0 = datetime(2024, 3, 15, 12, 0, 0, tzinfo=UTC)
SERVICE = "/services/activityservice.asmx/"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Emulator:
    """A running emulator and a client session to talk to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, state: EmulatorState):
        self.server = server
        self.http = session
        self.state = state

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def raw_call(self, operation: str, params: dict[str, Any]) -> aiohttp.ClientResponse:
        response = await self.http.post(self.url(SERVICE + operation), json=params)
        await response.read()
        return response

    async def call(self, operation: str, **params: Any) -> tuple[int, Any]:
        """Call an operation with the partner's credentials unless given; (status, body)."""
        params = {"partnerId": PARTNER_ID, "apiKey": API_KEY, **params}
        response = await self.raw_call(operation, params)
        return response.status, orjson.loads(await response.read())

    async def completed(self, start: str, end: str, **params: Any) -> Any:
        defaults = {"sessionKey": "", "nResults": 1000, "nextId": 0}
        status, body = await self.call(
            "PartnerCompletedSessions", startRange=start, endRange=end, **{**defaults, **params}
        )
        assert status == 200, body
        return body["d"]

    async def completed_ids(self, start: str, end: str) -> list[int]:
        """Every completed session id of a window, following the nextId chain."""
        ids: list[int] = []
        next_id = 0
        while True:
            d = await self.completed(start, end, nextId=next_id)
            ids.extend(session_ids(d))
            next_id = d["nextId"]
            if next_id == 0:
                return ids

    async def active(self, start: str, end: str, **params: Any) -> Any:
        defaults = {"sessionKey": "", "nResults": 1000, "nextId": 0}
        status, body = await self.call(
            "PartnerActiveSessions", startRange=start, endRange=end, **{**defaults, **params}
        )
        assert status == 200, body
        return body["d"]

    async def admin(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """An admin call that must succeed; its JSON answer."""
        status, answer = await self.admin_status(method, path, body, **kwargs)
        assert status == 200, answer
        return answer

    async def admin_status(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        data = kwargs.pop("data", None) if body is None else orjson.dumps(body)
        async with self.http.request(method, self.url(path), data=data, **kwargs) as response:
            return response.status, orjson.loads(await response.read())

    async def add_sessions(self, *sessions: dict[str, Any]) -> list[int]:
        answer = await self.admin(
            "POST", "/admin/sessions", {"partnerId": PARTNER_ID, "sessions": list(sessions)}
        )
        ids: list[int] = answer["ids"]
        return ids


def session_ids(d: Any) -> list[int]:
    """Ids of a listing's records, in the order served."""
    return [record["id"] for user in d["users"] for record in user["sessions"]]


def records(d: Any) -> list[dict[str, Any]]:
    return [record for user in d["users"] for record in user["sessions"]]
